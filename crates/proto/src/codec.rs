//! The codec of the generated servers: prost's, except that a request that does not decode is the
//! caller's mistake. tonic's prost codec answers INTERNAL (the gRPC spec's choice for a peer that
//! sends garbage); to a field app that sent a description with invalid UTF-8 that says "our bug,
//! retry", when the truth is "your request is wrong, and here is the field". So a decode failure
//! becomes INVALID_ARGUMENT with prost's own message, which names `Message.field`.
//!
//! Only the servers use this codec (see `build.rs`): a client that cannot decode a response keeps
//! tonic's INTERNAL, because there the fault is not in its own argument.

use std::marker::PhantomData;

use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstEncoder};

/// What prost puts before every decode error; the rest of its message names the field.
const PROST_PREFIX: &str = "failed to decode Protobuf message: ";

/// A [`Codec`] for server-side code: prost encoding, decode failures as INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub struct RequestCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for RequestCodec<T, U> {
    fn default() -> Self {
        RequestCodec {
            _types: PhantomData,
        }
    }
}

impl<T, U> Codec for RequestCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = RequestDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder { _type: PhantomData }
    }
}

/// Decodes a request message; see the module documentation.
#[derive(Debug, Clone)]
pub struct RequestDecoder<U> {
    _type: PhantomData<U>,
}

impl<U: prost::Message + Default> Decoder for RequestDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(invalid_argument)
    }
}

/// `ReportCaseRequest.description: invalid string value: data is not UTF-8 encoded`.
pub fn invalid_argument(error: prost::DecodeError) -> Status {
    let message = error.to_string();
    let message = message.strip_prefix(PROST_PREFIX).unwrap_or(&message);
    Status::invalid_argument(message.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    #[test]
    fn a_decode_failure_names_message_and_field() {
        // ReportCaseRequest, field 3 (description), length 2, bytes that are not UTF-8.
        let bytes: &[u8] = &[0x1a, 0x02, 0xff, 0xfe];
        let error = crate::ReportCaseRequest::decode(bytes).unwrap_err();
        let status = invalid_argument(error);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status
                .message()
                .starts_with("ReportCaseRequest.description: "),
            "{status:?}"
        );
    }
}
