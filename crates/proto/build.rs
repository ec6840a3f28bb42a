//! Compiles `proto/` with protox (no system `protoc`) and writes the descriptor set for reflection.
//!
//! Two passes over the same descriptors: the messages and the servers, whose codec refuses an
//! undecodable request with INVALID_ARGUMENT (`wangge_proto::codec`), then the clients alone, with
//! tonic's own codec, into `client/`, referring to the messages of the first pass.

use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files: Vec<PathBuf> = fs::read_dir(root.join("wangge/v1"))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    println!("cargo:rerun-if-changed={}", root.display());
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }

    let descriptors = protox::compile(&files, [&root])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out.join("wangge_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .codec_path("crate::codec::RequestCodec")
        .compile_fds(descriptors.clone())?;
    let clients = out.join("client");
    fs::create_dir_all(&clients)?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .extern_path(".wangge.v1", "crate::v1")
        .out_dir(&clients)
        .compile_fds(descriptors)?;
    Ok(())
}
