//! Generated protobuf types of schema version 1 (prost + pbjson), included
//! from the build script's output.

include!(concat!(env!("OUT_DIR"), "/cairn.v1.rs"));
include!(concat!(env!("OUT_DIR"), "/cairn.v1.serde.rs"));
