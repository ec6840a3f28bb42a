//! Size limits at the edge answer RESOURCE_EXHAUSTED, as gRPC specifies for a message larger than
//! the receiver accepts. tonic refuses such a request while decoding it, before any handler runs,
//! but says OUT_OF_RANGE; this layer rewrites that one answer so clients tell "too big" from "bad
//! field" without reading messages.

use tonic::Status;
use tonic::codegen::http;

/// What tonic's decoder says when a request message exceeds `max_decoding_message_size`.
const TONIC_TOO_LARGE: &str = "decoded message length too large";

/// Rewrites tonic's OUT_OF_RANGE "decoded message length too large" into RESOURCE_EXHAUSTED with
/// the same figures; every other response passes untouched. Handlers never answer OUT_OF_RANGE,
/// so nothing else is rewritten.
pub fn oversized_is_resource_exhausted<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    let Some(status) = Status::from_header_map(headers) else {
        return response;
    };
    if status.code() != tonic::Code::OutOfRange || !status.message().contains(TONIC_TOO_LARGE) {
        return response;
    }
    let figures = status
        .message()
        .split_once(": ")
        .map_or(status.message(), |(_, figures)| figures);
    let rewritten = Status::resource_exhausted(format!("request message too large: {figures}"));
    if rewritten.add_header(headers).is_err() {
        // The new message is plain ASCII; should it ever not encode, the original answer stands.
        tracing::debug!("could not rewrite the size refusal");
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: Status) -> http::Response<()> {
        status.into_http()
    }

    #[test]
    fn the_decoders_size_refusal_becomes_resource_exhausted_with_its_figures() {
        let tonic_says = Status::out_of_range(
            "Error, decoded message length too large: found 3000000 bytes, the limit is: 2097152 bytes",
        );
        let response = oversized_is_resource_exhausted(answer(tonic_says));
        let status = Status::from_header_map(response.headers()).unwrap();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "request message too large: found 3000000 bytes, the limit is: 2097152 bytes"
        );
    }

    #[test]
    fn other_answers_pass_untouched() {
        for original in [
            Status::out_of_range("page token past the end"),
            Status::invalid_argument("description: too long"),
            Status::resource_exhausted("gw-1 is calling faster than allowed"),
        ] {
            let response = oversized_is_resource_exhausted(answer(original.clone()));
            let status = Status::from_header_map(response.headers()).unwrap();
            assert_eq!(status.code(), original.code());
            assert_eq!(status.message(), original.message());
        }
        let ok = http::Response::new(());
        assert!(
            oversized_is_resource_exhausted(ok)
                .headers()
                .get("grpc-status")
                .is_none()
        );
    }
}
