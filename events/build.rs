//! Compiles `proto/cairn/v1/*.proto` with protox (a pure-Rust protobuf
//! compiler, so no system `protoc` is needed), generates prost types and
//! pbjson serde impls (proto3 JSON mapping with the proto field names).

use std::{env, fs, path::PathBuf};

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/cairn/v1/events.proto",
        "proto/cairn/v1/artifact.proto",
        "proto/cairn/v1/views.proto",
        "proto/cairn/v1/service.proto",
        "proto/cairn/v1/kv.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    let descriptor_bytes = fds.encode_to_vec();
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("cairn_descriptor.bin"), &descriptor_bytes)?;

    let mut config = prost_build::Config::new();
    config
        // BTreeMap for proto maps: deterministic encoding, so views folded
        // from the same events are byte-identical.
        .btree_map(["."])
        .compile_well_known_types()
        .extern_path(".google.protobuf", "::pbjson_types");
    config.compile_fds(fds)?;

    pbjson_build::Builder::new()
        .register_descriptors(&descriptor_bytes)?
        .btree_map(["."])
        .preserve_proto_field_names()
        .build(&[".cairn"])?;
    Ok(())
}
