
#[test]
#[ignore = "needs the local control plane and AWS servers: run scripts/test"]
fn a_workload_file_over_the_operators_limit_is_refused_and_one_at_the_limit_runs() {
    let _serial = serial();
    let mut c = Cluster::new("e2e-limit");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s3 = aws().s3();
    let bucket = "cloudkon-workloads-e2e";
    rt.block_on(s3.ensure_bucket(bucket)).unwrap();
    // "sleep 0\n" is 8 bytes: 512 lines are the limit, 513 one line over.
    let limit = 4096;
    let at_limit = "sleep 0\n".repeat(512);
    let over = "sleep 0\n".repeat(513);
    let prefix = c.ns.clone();
    for (key, text) in [("at-limit.txt", &at_limit), ("over.txt", &over)] {
        rt.block_on(s3.put_bytes(
            bucket,
            &format!("{prefix}/{key}"),
            text.clone().into_bytes(),
        ))
        .unwrap();
    }
    let operator = c.operator(
        "operator.log",
        &["--max-workload-bytes", &limit.to_string()],
    );
    c.apply(&scaling_pool("p", 2, 300));
    let batch = |name: &str, tasks: &str| {
        format!(
            "apiVersion: cloudkon.io/v1alpha1\nkind: TaskBatch\nmetadata: {{name: {name}}}\n\
             spec:\n  workerPool: p\n  tasks: {tasks}\n"
        )
    };
    c.apply(&batch(
        "over",
        &format!("{{s3: {{uri: \"s3://{bucket}/{prefix}/over.txt\"}}}}"),
    ));
    // A ConfigMap's workload is held to the same limit.
    c.apply(&format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: work}}\ndata:\n  over.txt: |\n{}",
        over.lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    ));
    c.apply(&batch(
        "over-cm",
        "{configMap: {name: work, key: over.txt}}",
    ));
    for name in ["over", "over-cm"] {
        let (_, reason, message) =
            c.wait_for(&format!("{name} refused"), Duration::from_secs(30), |c| {
                condition(&c.batch(name), "Accepted").filter(|x| x.0 == "False")
            });
        assert_eq!(reason, "InvalidSpec", "{name}: {message}");
        for part in ["4104 bytes", "limit of 4096 bytes", "--max-workload-bytes"] {
            assert!(message.contains(part), "{name}: {part:?} not in {message}");
        }
        assert_eq!(c.batch(name).status.unwrap().counts.enqueued, 0, "{name}");
        println!("{name}: {message}");
    }
    // At the limit: accepted, and it runs.
    c.apply(&batch(
        "at-limit",
        &format!("{{s3: {{uri: \"s3://{bucket}/{prefix}/at-limit.txt\"}}}}"),
    ));
    let queue = c.queue_url("p");
    let table = unique("e2e-ledger");
    c.workers(&queue, &table, 1);
    let s = c
        .wait_finished("at-limit", Duration::from_secs(120))
        .status
        .unwrap();
    assert_eq!(
        (s.phase, s.counts.succeeded),
        (Some(Phase::Succeeded), 512),
        "{s:?}"
    );
    assert!(
        c.children[operator].try_wait().unwrap().is_none(),
        "the operator exited:\n{}",
        c.logs()
    );
}
