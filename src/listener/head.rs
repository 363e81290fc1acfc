//! Limits on the request head (request line and header fields): a pure check over its sizes.

use http::HeaderMap;

/// Which limit of `[server]` a request head broke. Shown to the client in the 431 answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadLimitExceeded {
    #[error("The request has {count} header fields; at most {limit} are accepted.")]
    TooManyHeaders { count: usize, limit: usize },
    #[error("The request head is {bytes} bytes; at most {limit} are accepted.")]
    TooManyBytes { bytes: usize, limit: usize },
}

/// The head's size as it travelled: request line (`METHOD TARGET HTTP/1.1\r\n`, the target as
/// the client sent it) and every field (`name: value\r\n`), so a limit in bytes means what an
/// operator reading a capture expects.
pub fn head_bytes(method: &str, target: &[u8], headers: &HeaderMap) -> usize {
    let request_line = method.len() + 1 + target.len() + " HTTP/1.1\r\n".len();
    request_line
        + headers
            .iter()
            .map(|(name, value)| name.as_str().len() + 2 + value.len() + 2)
            .sum::<usize>()
}

/// `Err` when the head has more fields than `max_headers` or more bytes than `max_bytes`.
/// Called once the head is read, before anything is routed: a refused head reaches no backend.
pub fn check_head(
    header_count: usize,
    bytes: usize,
    max_headers: usize,
    max_bytes: usize,
) -> Result<(), HeadLimitExceeded> {
    if header_count > max_headers {
        return Err(HeadLimitExceeded::TooManyHeaders {
            count: header_count,
            limit: max_headers,
        });
    }
    if bytes > max_bytes {
        return Err(HeadLimitExceeded::TooManyBytes {
            bytes,
            limit: max_bytes,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_bytes_counts_request_line_and_fields_as_sent() {
        let mut headers = HeaderMap::new();
        headers.insert("host", "a".parse().unwrap());
        headers.append("x-y", "bc".parse().unwrap());
        // "POST /v1 HTTP/1.1\r\n" = 19, "host: a\r\n" = 9, "x-y: bc\r\n" = 9
        assert_eq!(head_bytes("POST", b"/v1", &headers), 19 + 9 + 9);
    }

    #[test]
    fn limits_are_inclusive_and_fields_are_checked_first() {
        assert_eq!(check_head(100, 32_768, 100, 32_768), Ok(()));
        assert_eq!(
            check_head(101, 10, 100, 32_768),
            Err(HeadLimitExceeded::TooManyHeaders {
                count: 101,
                limit: 100
            })
        );
        assert_eq!(
            check_head(5, 32_769, 100, 32_768),
            Err(HeadLimitExceeded::TooManyBytes {
                bytes: 32_769,
                limit: 32_768
            })
        );
        assert!(matches!(
            check_head(500, 1 << 20, 100, 32_768),
            Err(HeadLimitExceeded::TooManyHeaders { .. })
        ));
    }
}
