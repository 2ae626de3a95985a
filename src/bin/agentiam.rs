//! The agentiam operator.
use agentiam::crdgen;
fn main() {
    for crd in crdgen::all() { print!("{}", crdgen::render(&crd).unwrap()); }
}
