//! Compiles `src/pystate/pystate.c` against the headers (internal ones included) of the
//! exact interpreter this extension is being built for, so every private field it touches
//! has the offset that interpreter uses; with the `valgrind` feature, also
//! `src/fiber/valgrind.c`.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    pyo3_build_config::use_pyo3_cfgs();
    let config = pyo3_build_config::get();
    let python = config
        .executable()
        .map(str::to_owned)
        .expect("pyo3 did not report the Python interpreter being built for");
    let output = Command::new(&python)
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('include')); print(sysconfig.get_config_var('Py_GIL_DISABLED') or 0)",
        ])
        .output()
        .expect("could not run the Python interpreter to find its headers");
    assert!(
        output.status.success(),
        "asking {python} for its include directory failed"
    );
    let stdout = String::from_utf8(output.stdout).expect("non-UTF-8 include path");
    let mut lines = stdout.lines();
    let include = PathBuf::from(lines.next().expect("no include path printed"));
    assert!(
        include.join("internal").is_dir(),
        "{} has no internal/ headers; install the interpreter's development headers",
        include.display()
    );
    assert_eq!(
        lines.next().map(str::trim),
        Some("0"),
        "free-threaded CPython builds are not supported"
    );

    cc::Build::new()
        .file("src/pystate/pystate.c")
        .file("src/fiber/stack_root.c")
        .include(&include)
        // Debian-style layouts keep the real pyconfig.h in <multiarch>/pythonX.Y/ beside it.
        .include(include.parent().unwrap_or(&include))
        .warnings(true)
        .extra_warnings(true)
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-missing-field-initializers")
        .opt_level(2)
        .compile("awaitlet_pystate");
    println!("cargo:rerun-if-changed=src/pystate/pystate.c");
    println!("cargo:rerun-if-changed=src/fiber/stack_root.c");
    println!("cargo:rerun-if-changed=build.rs");

    if std::env::var_os("CARGO_FEATURE_VALGRIND").is_some() {
        compile_valgrind_shim();
    }
}

/// The `valgrind` feature's client requests (src/fiber/valgrind.c), which need valgrind's
/// header.
fn compile_valgrind_shim() {
    println!("cargo:rerun-if-changed=src/fiber/valgrind.c");
    let compiled = cc::Build::new()
        .file("src/fiber/valgrind.c")
        .warnings(true)
        .opt_level(2)
        .cargo_warnings(false)
        .try_compile("awaitlet_valgrind");
    if let Err(error) = compiled {
        panic!(
            "the `valgrind` feature needs valgrind's header <valgrind/valgrind.h> \
             (Debian and Ubuntu: apt-get install valgrind): {error}"
        );
    }
}
