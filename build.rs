//! Build script: decides at compile time whether the integration tests have PostgreSQL
//! variants. It only reads `CONVERGER_TEST_DATABASE_URL`; it must not touch the
//! database or generate code.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=CONVERGER_TEST_DATABASE_URL");
    // Set when the variable names a server: `both_backends!` then generates the
    // `postgres` variant of every test (tests/it/common/mod.rs).
    println!("cargo::rustc-check-cfg=cfg(postgres_tests)");
    if std::env::var_os("CONVERGER_TEST_DATABASE_URL").is_some_and(|url| !url.is_empty()) {
        println!("cargo::rustc-cfg=postgres_tests");
    }
}
