//! `include/gptq.h` must be exactly what cbindgen generates from the sources today.
//! Regenerate it with `GPTQ_BLESS=1 cargo test --test header`.

use std::path::PathBuf;

fn generate() -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut config = cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("cbindgen.toml");
    let (major, minor, patch) = (
        env!("CARGO_PKG_VERSION_MAJOR"),
        env!("CARGO_PKG_VERSION_MINOR"),
        env!("CARGO_PKG_VERSION_PATCH"),
    );
    let number: u32 = major.parse::<u32>().unwrap() * 10000 + minor.parse::<u32>().unwrap() * 100 + patch.parse::<u32>().unwrap();
    config.after_includes = Some(format!(
        "\n#define GPTQ_VERSION_MAJOR {major}\n#define GPTQ_VERSION_MINOR {minor}\n#define GPTQ_VERSION_PATCH {patch}\n\
         /* major·10000 + minor·100 + patch; compare with gptq_version_number() at run time. */\n\
         #define GPTQ_VERSION_NUMBER {number}\n#define GPTQ_VERSION_STRING \"{major}.{minor}.{patch}\"\n"
    ));
    let mut out = Vec::new();
    cbindgen::Builder::new()
        .with_config(config)
        .with_crate(&root)
        .generate()
        .expect("cbindgen failed")
        .write(&mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn committed_header_is_up_to_date() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("include/gptq.h");
    let fresh = generate();
    if std::env::var_os("GPTQ_BLESS").is_some() {
        std::fs::write(&path, &fresh).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "include/gptq.h is stale: run `GPTQ_BLESS=1 cargo test --test header` and commit the result"
    );
}

#[test]
fn readme_c_quick_start_is_the_tested_program() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let program = std::fs::read_to_string(root.join("tests/c/readme_quickstart.c")).unwrap();
    assert!(
        readme.contains(&format!("```c\n{program}```")),
        "README.md's C quick start differs from tests/c/readme_quickstart.c"
    );
}
