//! Names that end up in object keys and file paths: database names and key components.
//! (A leaf: config, manifest and storage all check names with these rules.)

/// Database names end up in object keys: keep them to `[a-z0-9_-]+`.
pub fn validate_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!("must be 1 to 64 characters (got {name:?})"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return Err(format!("must match [a-z0-9_-]+ (got {name:?})"));
    }
    Ok(())
}

/// Check one `/`-separated key component.
pub fn validate_component(part: &str) -> Result<(), &'static str> {
    if part.is_empty() {
        return Err("empty path component");
    }
    if part == "." || part == ".." {
        return Err("relative path component");
    }
    if part.starts_with('.') {
        return Err("component starts with a dot");
    }
    if !part
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("character outside [A-Za-z0-9._-]");
    }
    Ok(())
}

/// Store names (`[[stores]]`) appear in output, metrics labels and `--store`: 1-32 of
/// `[a-z0-9_-]`.
pub fn validate_store_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name.len() > 32 {
        return Err(format!("must be 1 to 32 characters (got {name:?})"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return Err(format!("must match [a-z0-9_-]+ (got {name:?})"));
    }
    Ok(())
}
