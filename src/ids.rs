//! Identifiers shared by every layer: rooms, members and nodes. A leaf
//! module: it depends on nothing else in the crate.

use std::sync::Arc;

/// A room id, validated (length, characters) before a room is looked up.
pub type RoomId = Arc<str>;

/// A member id: one WebSocket session in one room set, unique across the
/// cluster because it starts with the node id (`<node>-<counter>`).
pub type MemberId = Arc<str>;

/// The node id of a member id (`<node>-<counter>`); `None` for an id that
/// carries no node (not minted by [`member_id`]).
pub fn node_of(member: &str) -> Option<&str> {
    member.split_once('-').map(|(node, _)| node)
}

/// The member id of the `n`th session of node `node`.
pub fn member_id(node: &str, n: u64) -> MemberId {
    Arc::from(format!("{node}-{n}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_ids_carry_their_node() {
        let id = member_id("abcd0123", 17);
        assert_eq!(&*id, "abcd0123-17");
        assert_eq!(node_of(&id), Some("abcd0123"));
        assert_eq!(node_of("nodash"), None);
    }
}
