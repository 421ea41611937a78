//! Builds the bundled plugin components (`plugins/*`) for `wasm32-wasip2` and embeds them, and
//! builds the test components (`tests/components/*`), whose directory the tests find in
//! `WEIR_TEST_COMPONENTS`. So `cargo build` and `cargo test` need no manual step. Same approach as wasmtime's
//! `crates/test-programs/artifacts`: a nested `cargo build` into its own target directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::{env, fs};

const WASM_TARGET: &str = "wasm32-wasip2";
const PROFILE: &str = "plugin";

#[derive(serde::Deserialize)]
struct CrateManifest {
    package: CratePackage,
}

#[derive(serde::Deserialize)]
struct CratePackage {
    name: String,
    version: String,
}

fn main() {
    let runtime_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let root = runtime_dir.parent().unwrap().to_path_buf();
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    for watched in [
        "plugins",
        "tests/components",
        "sdk",
        "wit",
        "Cargo.lock",
        ".cargo/config.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }

    let plugins = component_packages(&root.join("plugins"));
    let test_components = component_packages(&root.join("tests/components"));
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), PathBuf::from)
        .join("plugins");
    build_components(&root, &target_dir, plugins.iter().chain(&test_components));
    let built_dir = target_dir.join(WASM_TARGET).join(PROFILE);
    println!(
        "cargo:rustc-env=WEIR_TEST_COMPONENTS={}",
        built_dir.display()
    );

    let mut generated = String::from(
        "/// Plugin components built from `plugins/` by `build.rs`, embedded in the binary.\n\
         pub const BUNDLED: &[BundledComponent] = &[\n",
    );
    for plugin in &plugins {
        let file = format!("{}.wasm", plugin.name.replace('-', "_"));
        let built = built_dir.join(&file);
        // Copy so the embedded bytes cannot change under a concurrent nested build.
        let embedded = out_dir.join(&file);
        fs::copy(&built, &embedded).unwrap_or_else(|e| panic!("copying {}: {e}", built.display()));
        generated.push_str(&format!(
            "    BundledComponent {{ name: {:?}, version: {:?}, wasm: include_bytes!({:?}) }},\n",
            plugin.name,
            plugin.version,
            embedded.display().to_string()
        ));
    }
    generated.push_str("];\n");
    fs::write(out_dir.join("bundled.rs"), generated).unwrap();
}

/// Name and version of every crate in `dir`, sorted by name.
fn component_packages(dir: &Path) -> Vec<CratePackage> {
    let mut packages: Vec<CratePackage> = fs::read_dir(dir)
        .unwrap()
        .filter_map(|entry| {
            let manifest = entry.ok()?.path().join("Cargo.toml");
            let text = fs::read_to_string(manifest).ok()?;
            Some(toml::from_str::<CrateManifest>(&text).unwrap().package)
        })
        .collect();
    packages.sort_by(|a, b| a.name.cmp(&b.name));
    packages
}

fn build_components<'a>(
    root: &Path,
    target_dir: &Path,
    packages: impl Iterator<Item = &'a CratePackage>,
) {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args(["build", "--target", WASM_TARGET, "--profile", PROFILE])
        .arg("--target-dir")
        .arg(target_dir);
    for package in packages {
        cmd.args(["-p", &package.name]);
    }
    // The outer build's flags and wrappers (clippy, coverage, host CPU flags) are for the host,
    // not for the wasm guests.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .expect("running cargo to build the plugin components");
    if !status.success() {
        panic!(
            "building the components for {WASM_TARGET} failed. If the target is missing, \
             run `rustup toolchain install` in the repository root: it installs the toolchain \
             and targets that rust-toolchain.toml pins."
        );
    }
}
