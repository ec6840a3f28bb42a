//! The wangge v1 API, generated from `proto/wangge/v1` at build time.

#![allow(clippy::all, clippy::unwrap_used, missing_docs)]

pub mod codec;

/// Package `wangge.v1`.
pub mod v1 {
    // Messages and servers (with `codec::RequestCodec`).
    tonic::include_proto!("wangge.v1");
    // Clients (with tonic's prost codec).
    include!(concat!(env!("OUT_DIR"), "/client/wangge.v1.rs"));
}

/// The encoded file descriptor set of every wangge proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/wangge_descriptor.bin"));

pub use v1::*;
