//! MIME parsing (placeholder)
