//! The committed CRDs (crds/ and the chart's copy) must be exactly what the Rust types generate.

// Test code: a panic is a failed test with a message, which is what we want here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

use agentiam::crdgen;

#[test]
fn committed_crds_match_the_rust_types() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in ["crds", "charts/agentiam/crds"] {
        for crd in crdgen::all() {
            let name = crdgen::file_name(&crd);
            let path = root.join(dir).join(&name);
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            let generated = crdgen::render(&crd).unwrap();
            assert!(
                committed == generated,
                "{} is stale: run `make generate` and commit the result",
                path.display()
            );
        }
        let files = std::fs::read_dir(root.join(dir)).unwrap().count();
        assert_eq!(files, crdgen::all().len(), "{dir} has files that no Rust type generates");
    }
}

#[test]
fn every_crd_has_status_printer_columns_and_short_names() {
    for crd in crdgen::all() {
        let v = &crd.spec.versions[0];
        assert_eq!(crd.spec.group, "agentiam.dev");
        assert_eq!(v.name, "v1alpha1");
        assert!(
            v.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(),
            "{} lacks status",
            crd.spec.names.kind
        );
        assert!(
            v.additional_printer_columns.as_ref().is_some_and(|c| c.len() >= 3),
            "{}",
            crd.spec.names.kind
        );
        assert!(
            crd.spec.names.short_names.as_ref().is_some_and(|s| !s.is_empty()),
            "{}",
            crd.spec.names.kind
        );
        assert!(crd.spec.names.categories.as_ref().is_some_and(|c| c.contains(&"agentiam".to_owned())));
    }
}
