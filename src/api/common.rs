//! Types shared by several kinds.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Schema transform for unsigned Rust integers: the API server knows the formats int32 and int64 only, and
/// warns about schemars' "uint16"/"uint32".
pub(crate) fn int32(schema: &mut schemars::Schema) {
    schema.insert("format".into(), "int32".into());
}

/// A reference to an object of a known kind in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalRef {
    /// Name of the referenced object in the same namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Who a human-facing principal is: an individual, an identity-provider group or an organisational team.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum PrincipalKind {
    /// A single human, named as the identity provider names them (e.g. an email address).
    User,
    /// A group as the identity provider or Kubernetes RBAC names it.
    Group,
    /// An organisational team (e.g. a team slug in the engineering directory).
    Team,
}

impl std::fmt::Display for PrincipalKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::User => "User",
            Self::Group => "Group",
            Self::Team => "Team",
        })
    }
}
