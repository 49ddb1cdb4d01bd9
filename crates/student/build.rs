//! Embeds an rpath to libtorch so the worker runs without LD_LIBRARY_PATH, and keeps
//! libtorch_cuda linked when it exists (with `--as-needed` the linker drops it, since no symbol
//! is referenced directly, and `device = "cuda"` would then find no CUDA backend).
fn main() {
    // torch-sys exports the directory it linked against as DEP_TCH_LIBTORCH_LIB.
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        if std::path::Path::new(&dir).join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
            println!("cargo:rustc-link-arg=-L{dir}");
            println!("cargo:rustc-link-arg=-ltorch_cuda");
            println!("cargo:rustc-link-arg=-Wl,--as-needed");
        }
    }
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
}
