//! Who is asking, as far as a new session records it.

/// The client's address and user agent, kept with a new session (for the user's session
/// list) and counted by the login throttle (the address).
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    /// The client's IP address as text (`None`: unknown; throttled as one shared client).
    pub ip: Option<String>,
    /// The `User-Agent` header, if any.
    pub user_agent: Option<String>,
}
