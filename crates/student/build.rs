//! Embeds an rpath to libtorch so the worker runs without LD_LIBRARY_PATH.
fn main() {
    // torch-sys exports the directory it linked against as DEP_TCH_LIBTORCH_LIB.
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
}
