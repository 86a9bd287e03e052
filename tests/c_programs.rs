//! Programs in other languages against the freshly built libgptq.so: the C programs in tests/c and
//! the C++ binding's test (bindings/cpp), compiled against include/gptq.h with strict warnings and
//! run plainly and under AddressSanitizer + UBSan; the Go binding's tests (`go test` in
//! bindings/go); the Node binding's addon, compiled with strict warnings, and its tests (`node
//! --test` in bindings/node). A missing toolchain skips its test with a notice, except under CI
//! (`CI` set), where it fails.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The directory holding the libgptq.so that cargo built for this test run.
fn lib_dir() -> PathBuf {
    // Integration tests run from target/<profile>/deps, where `cargo test` leaves the cdylib.
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap().to_path_buf();
    for dir in [deps.clone(), deps.parent().unwrap().to_path_buf()] {
        if dir.join("libgptq.so").exists() {
            return dir;
        }
    }
    panic!("libgptq.so not found next to {}", exe.display());
}

fn compile_and_run(src: &Path, sanitize: bool) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = lib_dir();
    let name = src.file_stem().unwrap().to_str().unwrap();
    let exe = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}{}", if sanitize { "-asan" } else { "" }));
    let cpp = src.extension().is_some_and(|e| e == "cpp");
    let cc = if cpp {
        std::env::var("CXX").unwrap_or_else(|_| "c++".into())
    } else {
        std::env::var("CC").unwrap_or_else(|_| "cc".into())
    };
    let mut cmd = Command::new(&cc);
    cmd.arg(if cpp { "-std=c++17" } else { "-std=c11" })
        .args(["-Wall", "-Wextra", "-Wpedantic", "-Werror", "-O1", "-g"])
        .arg("-I")
        .arg(root.join("include"))
        .arg("-I")
        .arg(root.join("bindings/cpp"))
        .arg(src)
        .arg("-o")
        .arg(&exe)
        .arg(format!("-L{}", lib.display()))
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .args(["-lgptq", "-lm"]);
    if sanitize {
        cmd.args(["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all"]);
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cc}: {e}"));
    assert!(out.status.success(), "compiling {name} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let run = Command::new(&exe)
        .env("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
        .env("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{name}{} failed:\nstdout:\n{}\nstderr:\n{}",
        if sanitize { " (ASan/UBSan)" } else { "" },
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
}

fn programs() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "c"))
        .collect();
    v.sort();
    assert!(!v.is_empty());
    v
}

/// The C++ binding's test program.
fn cpp_binding_test() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("bindings/cpp/test_gptq.cpp")
}

#[test]
fn cpp_binding_test_passes() {
    compile_and_run(&cpp_binding_test(), false);
}

#[test]
fn cpp_binding_test_passes_under_address_and_undefined_sanitizers() {
    compile_and_run(&cpp_binding_test(), true);
}

#[test]
fn c_programs_pass() {
    for p in programs() {
        compile_and_run(&p, false);
    }
}

#[test]
fn c_programs_pass_under_address_and_undefined_sanitizers() {
    for p in programs() {
        compile_and_run(&p, true);
    }
}

/// Whether `tool` runs; if not, a notice (or, under CI, a failure: CI must run every binding).
fn have(tool: &str) -> bool {
    if Command::new(tool).arg("version").output().is_ok_and(|o| o.status.success())
        || Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success())
    {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "{tool} is not installed, and CI must run the binding tests");
    println!("NOTICE: {tool} not found; its binding's tests are skipped");
    false
}

#[test]
fn go_binding_tests_pass() {
    if !have("go") {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = lib_dir();
    let out = Command::new("go")
        .args(["test", "-count=1", "./..."])
        .current_dir(root.join("bindings/go"))
        .env("CGO_ENABLED", "1")
        .env("CGO_LDFLAGS", format!("-L{} -Wl,-rpath,{}", lib.display(), lib.display()))
        .output()
        .expect("go test");
    assert!(
        out.status.success(),
        "go test failed:\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn node_binding_tests_pass() {
    let headers = Path::new("/usr/include/node/node_api.h");
    if !have("node") {
        return;
    }
    assert!(headers.exists() || std::env::var_os("CI").is_none(), "N-API headers missing: {}", headers.display());
    if !headers.exists() {
        println!("NOTICE: no N-API headers at {}; the Node binding's tests are skipped", headers.display());
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = lib_dir();
    let addon = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gptq.node");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Wpedantic", "-Werror", "-O1", "-g", "-fPIC", "-shared"])
        .arg(format!("-I{}", headers.parent().unwrap().display()))
        .arg(format!("-I{}", root.join("include").display()))
        .arg(root.join("bindings/node/src/addon.c"))
        .arg("-o")
        .arg(&addon)
        .arg(format!("-L{}", lib.display()))
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .args(["-lgptq", "-lm"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cc}: {e}"));
    assert!(out.status.success(), "compiling the Node addon failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new("node")
        .arg("--test")
        .current_dir(root.join("bindings/node"))
        .env("GPTQ_NODE_ADDON", &addon)
        .output()
        .expect("node --test");
    assert!(
        out.status.success(),
        "node --test failed:\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
