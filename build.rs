//! Compiles `src/pystate/pystate.c` against the headers (internal ones included) of the
//! exact interpreter this extension is being built for, so every private field it touches
//! has the offset that interpreter uses; with the `valgrind` feature, also
//! `src/fiber/valgrind.c`.
//!
//! What a source build lacks (the internal headers, most often) ends the build with one
//! sentence naming what to install, through [`fail`], rather than a panic and its backtrace.

use std::path::PathBuf;
use std::process::Command;

/// Overrides the interpreter's include directory (where `Python.h` and `internal/` are);
/// by default, what the interpreter's `sysconfig` says.
const INCLUDE_VARIABLE: &str = "AWAITLET_PYTHON_INCLUDE";

fn main() {
    check_target();
    let config = pyo3_build_config::get();
    let version = format!("{}.{}", config.version().major, config.version().minor);
    let Some(python) = config.executable().map(str::to_owned) else {
        fail(
            "pyo3 did not report which Python interpreter this build is for: set PYO3_PYTHON to it",
        );
    };
    let output = Command::new(&python)
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('include')); print(sysconfig.get_config_var('Py_GIL_DISABLED') or 0)",
        ])
        .output();
    let stdout = match output {
        Ok(output) if output.status.success() => {
            String::from_utf8_lossy(&output.stdout).into_owned()
        }
        _ => fail(&format!("could not ask {python} for its include directory")),
    };
    let mut lines = stdout.lines();
    let reported_include = lines.next().unwrap_or_default();
    let free_threaded = lines.next().map(str::trim) != Some("0");
    if free_threaded {
        fail("awaitlet-rs does not support free-threaded CPython builds (python3.Xt) yet");
    }
    let include = match std::env::var_os(INCLUDE_VARIABLE) {
        Some(include) => PathBuf::from(include),
        None => PathBuf::from(reported_include),
    };
    if !include.join("Python.h").is_file() || !include.join("internal").is_dir() {
        fail(&format!(
            "awaitlet-rs compiles against CPython's internal headers, which {} lacks: \
             install Python {version}'s development headers, internal ones included \
             (Debian and Ubuntu: apt-get install python{version}-dev; Fedora: python3-devel), \
             or install a prebuilt wheel instead of building from source",
            include.display()
        ));
    }
    // Printed after the checks, so that a failed check's message is all cargo shows.
    println!("cargo:rerun-if-env-changed={INCLUDE_VARIABLE}");
    pyo3_build_config::use_pyo3_cfgs();

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

/// Ends the build with `message`, one sentence for the person building: cargo shows it under
/// the build script's `--- stderr`, with nothing else.
fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1);
}

/// The fiber stacks are made with mmap and mprotect, and the stack root is written for
/// System V platforms: Linux and macOS (see the README's "Supported platforms").
fn check_target() {
    let family = std::env::var("CARGO_CFG_TARGET_FAMILY").unwrap_or_default();
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if !family.split(',').any(|family| family == "unix") {
        fail(&format!(
            "awaitlet-rs does not support {os} yet: its fiber stacks need mmap and mprotect \
             (Linux and macOS are supported)"
        ));
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
    if compiled.is_err() {
        fail(
            "the `valgrind` feature needs valgrind's header <valgrind/valgrind.h> \
             (Debian and Ubuntu: apt-get install valgrind)",
        );
    }
}
