//! What a WorkerPool may name outside Kubernetes: its queue
//! (`spec.queue.name`), and the launch template, Auto Scaling group or EKS
//! node group its workers run on. Whoever can create a WorkerPool would
//! otherwise drain or scale another tenant's queue or fleet with the
//! operator's IAM role; the operator's flags say which names are allowed, as
//! patterns: `*` matches any text, `{namespace}` is the pool's namespace.

/// The operator's allowlists (`cloudkon-operator run --allowed-*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedNames {
    pub queues: Vec<String>,
    pub launch_templates: Vec<String>,
    pub auto_scaling_groups: Vec<String>,
    /// Matched against `<cluster>/<nodegroup>`.
    pub eks_nodegroups: Vec<String>,
}

/// The default: names under `cloudkon-`, as the example pool and the IAM
/// policies in README use. One namespace per tenant wants
/// `cloudkon-{namespace}_*` for queues (see README's trust model).
pub const DEFAULT_PATTERN: &str = "cloudkon-*";
/// EKS node groups: any cluster, node groups under `cloudkon-`.
pub const DEFAULT_EKS_PATTERN: &str = "*/cloudkon-*";

impl Default for AllowedNames {
    fn default() -> Self {
        Self {
            queues: vec![DEFAULT_PATTERN.into()],
            launch_templates: vec![DEFAULT_PATTERN.into()],
            auto_scaling_groups: vec![DEFAULT_PATTERN.into()],
            eks_nodegroups: vec![DEFAULT_EKS_PATTERN.into()],
        }
    }
}

/// Whether `name` matches one of `patterns` for a pool in `namespace`.
pub fn allowed(patterns: &[String], namespace: &str, name: &str) -> bool {
    patterns
        .iter()
        .any(|p| glob(&p.replace("{namespace}", namespace), name))
}

/// `*` matches any run of characters (none included); the rest literally.
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty(); // no `*`: an exact name
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_by_glob_with_the_namespace_filled_in() {
        let p = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let cases: &[(&[&str], &str, bool)] = &[
            (&["cloudkon-*"], "cloudkon-sweep", true),
            (&["cloudkon-*"], "cloudkon-", true),
            (&["cloudkon-*"], "other-sweep", false),
            (&["cloudkon-*"], "xcloudkon-sweep", false),
            (&["exact"], "exact", true),
            (&["exact"], "exactly", false),
            (&["cloudkon-{namespace}_*"], "cloudkon-team-a_q", true),
            (&["cloudkon-{namespace}_*"], "cloudkon-team-b_q", false),
            // A namespace that is a prefix of another does not reach it.
            (&["cloudkon-{namespace}_*"], "cloudkon-team-a-x_q", false),
            (&["*/cloudkon-*"], "prod/cloudkon-ng", true),
            (&["*/cloudkon-*"], "prod/ng", false),
            (&["a*b*c"], "a-x-b-y-c", true),
            (&["a*b*c"], "a-x-c", false),
            (&[], "cloudkon-sweep", false),
            (&["x", "cloudkon-*"], "cloudkon-q", true),
        ];
        for (patterns, name, want) in cases {
            assert_eq!(
                allowed(&p(patterns), "team-a", name),
                *want,
                "{patterns:?} {name}"
            );
        }
    }
}
