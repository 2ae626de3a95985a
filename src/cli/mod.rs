//! `kubectl agentiam`: the user CLI. Thin over the library, so the same checks run here as in the operator.

pub mod approve;
pub mod audit;
pub mod can_i;
pub mod delegate;
pub mod discover;
pub mod oauth;
pub mod token;

/// Rows as a kubectl-style table: columns padded to their widest cell, two spaces apart. Pure.
pub fn table<const N: usize>(rows: &[[String; N]]) -> String {
    use std::fmt::Write as _;
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}
