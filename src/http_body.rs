//! Reading upstream HTTP bodies (JWKS, discovery, introspection) with a size limit, so a
//! broken or hostile upstream cannot make Portcullis buffer without bound.

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("response larger than {0} bytes")]
    TooLarge(usize),
    #[error("reading the response failed: {0}")]
    Read(String),
}

/// The whole body, refused as soon as it (or its announced length) passes `max` bytes.
pub async fn read_limited(
    mut response: reqwest::Response,
    max: usize,
) -> Result<Vec<u8>, BodyError> {
    if response
        .content_length()
        .is_some_and(|len| len > max as u64)
    {
        return Err(BodyError::TooLarge(max));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|err| BodyError::Read(err.without_url().to_string()))?
    {
        if body.len() + chunk.len() > max {
            return Err(BodyError::TooLarge(max));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
