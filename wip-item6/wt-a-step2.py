import re
root='/work/wt-a/'
def edit(p, old, new, count=1):
    s=open(root+p).read()
    assert old in s, (p, old[:60])
    s=s.replace(old,new,count)
    open(root+p,'w').write(s)

edit('operator/src/context.rs','''    /// Largest results part (bytes); see `cloudkon-operator run --help`.
    pub results_part_bytes: usize,
''','''    /// Largest results part (bytes); see `cloudkon-operator run --help`.
    pub results_part_bytes: usize,
    /// Largest workload file (ConfigMap or S3) a batch may name, in bytes:
    /// it is read whole and held while the batch enqueues.
    pub max_workload_bytes: u64,
''')
edit('operator/src/context.rs','''            results_part_bytes: 8 << 20,
''','''            results_part_bytes: 8 << 20,
            max_workload_bytes: DEFAULT_MAX_WORKLOAD_BYTES,
''')
edit('operator/src/context.rs','''/// Settings from the command line.''','''/// `--max-workload-bytes` by default: a few of these and the results parts
/// in flight stay well within the chart's 256 MiB.
pub const DEFAULT_MAX_WORKLOAD_BYTES: u64 = 32 << 20;

/// Settings from the command line.''')

edit('operator/src/main.rs','''    results_part_bytes: u64,
''','''    results_part_bytes: u64,

    /// Largest workload file (`spec.tasks.s3` or `spec.tasks.configMap`) a
    /// TaskBatch may name, in bytes. The operator reads it whole and holds it
    /// while the batch enqueues: a larger one is refused (Accepted=False,
    /// InvalidSpec) before its body is read. Mind the operator's memory limit
    /// when raising it.
    #[arg(long, env = "CLOUDKON_MAX_WORKLOAD_BYTES",
          default_value_t = cloudkon_operator::context::DEFAULT_MAX_WORKLOAD_BYTES,
          value_parser = clap::value_parser!(u64).range(1..=(4u64 << 30)))]
    max_workload_bytes: u64,
''')
edit('operator/src/main.rs','''                        .unwrap_or(usize::MAX),
''','''                        .unwrap_or(usize::MAX),
                    max_workload_bytes: args.max_workload_bytes,
''')

edit('operator/src/batch_reconciler.rs','''        let bytes = ctx.s3.get_bytes(&uri.bucket, &uri.key).await.map_err(|e| {
            let what = if e.kind == ErrorKind::NotFound {
                format!("{} does not exist", s3.uri)
            } else {
                format!("cannot read {}: {e}", s3.uri)
            };
            invalid(field, what)
        })?;
        (field, s3.uri.clone(), bytes)''','''        let limit = ctx.settings.max_workload_bytes;
        let read = ctx
            .s3
            .get_bytes_at_most(&uri.bucket, &uri.key, limit)
            .await
            .map_err(|e| {
                let what = if e.kind == ErrorKind::NotFound {
                    format!("{} does not exist", s3.uri)
                } else {
                    format!("cannot read {}: {e}", s3.uri)
                };
                invalid(field, what)
            })?;
        let bytes = match read {
            Limited::Bytes(bytes) => bytes,
            Limited::TooLarge { size, declared } => {
                let size = if declared {
                    format!("{size} bytes")
                } else {
                    format!("more than {limit} bytes")
                };
                return Err(invalid(field, too_large(&s3.uri, &size, limit)));
            }
        };
        (field, s3.uri.clone(), bytes)''')
edit('operator/src/batch_reconciler.rs','''        (field, format!("configmap/{}/{}", cm.name, cm.key), bytes)''','''        // The API server keeps a ConfigMap under 1 MiB; the operator's
        // limit may be lower.
        let limit = ctx.settings.max_workload_bytes;
        if bytes.len() as u64 > limit {
            let what = format!("ConfigMap {:?} key {:?}", cm.name, cm.key);
            let size = format!("{} bytes", bytes.len());
            return Err(invalid(field, too_large(&what, &size, limit)));
        }
        (field, format!("configmap/{}/{}", cm.name, cm.key), bytes)''')
edit('operator/src/batch_reconciler.rs','''fn invalid(field: &str, message: String) -> Vec<Invalid> {''','''/// Why a workload file is refused for its size: what to do about it.
fn too_large(what: &str, size: &str, limit: u64) -> String {
    format!(
        "{what} is {size}, over the operator's limit of {limit} bytes for a workload file \\
         (cloudkon-operator --max-workload-bytes): split it into several TaskBatches, \\
         use a generator, or raise the limit with the operator's memory"
    )
}

fn invalid(field: &str, message: String) -> Vec<Invalid> {''')
edit('operator/src/batch_reconciler.rs','use cloudkon_core::aws::{ErrorKind, S3Uri};','use cloudkon_core::aws::{ErrorKind, Limited, S3Uri};')
