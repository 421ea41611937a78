//! The plugin components that ship inside the `weir` binary (built from `plugins/` by
//! `build.rs`), so a manifest can name them by `name@version` with no file to deploy.

/// A component embedded in the binary.
pub struct BundledComponent {
    pub name: &'static str,
    pub version: &'static str,
    pub wasm: &'static [u8],
}

include!(concat!(env!("OUT_DIR"), "/bundled.rs"));

/// The bundled component `name@version`, if there is one.
pub fn find(name: &str, version: &str) -> Option<&'static BundledComponent> {
    BUNDLED
        .iter()
        .find(|c| c.name == name && c.version == version)
}

/// "name@version, ..." of every bundled component, for error messages.
pub fn list() -> String {
    BUNDLED
        .iter()
        .map(|c| format!("{}@{}", c.name, c.version))
        .collect::<Vec<_>>()
        .join(", ")
}
