//! `b24 call` output formats: json, ndjson, csv and table.

use crate::support::*;

/// Parse csv output into its header and rows (with the csv crate: quoting is checked too).
fn csv_rows(o: &std::process::Output) -> (Vec<String>, Vec<Vec<String>>) {
    let mut r = csv::Reader::from_reader(o.stdout.as_slice());
    let header = r.headers().unwrap().iter().map(String::from).collect();
    let rows = r
        .records()
        .map(|x| x.unwrap().iter().map(String::from).collect())
        .collect();
    (header, rows)
}

#[tokio::test(flavor = "multi_thread")]
async fn output_formats_json_ndjson_csv_table() {
    let sb = sandbox_with_leads(60).await;
    let env = Env::webhook(&sb);
    // A title that needs quoting in csv.
    let o = env
        .run(&[
            "call",
            "crm.lead.update",
            "--confirm-write",
            "-p",
            r#"{"id": 3, "fields": {"TITLE": "Smith, \"Jo\"\nline two"}}"#,
        ])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let sel = r#"{"select":["TITLE","ID"],"filter":{"<=ID":5}}"#;

    // JSON: compact in a pipe, pretty with --pretty; the same document either way.
    let o = env.run(&["call", "crm.lead.list", "-p", sel]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), 1, "compact: {}", stdout(&o));
    let compact = json(&o);
    let o = env
        .run(&["call", "crm.lead.list", "-p", sel, "--pretty"])
        .await;
    assert!(stdout(&o).lines().count() > 10, "pretty: {}", stdout(&o));
    assert_eq!(json(&o), compact);

    // CSV: the selected order, proper quoting, one row per record.
    let o = env
        .run(&["call", "crm.lead.list", "-p", sel, "-o", "csv"])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let (h, rows) = csv_rows(&o);
    assert_eq!(h, vec!["TITLE", "ID"]);
    assert_eq!(rows.len(), 5);
    assert_eq!(rows[2], vec!["Smith, \"Jo\"\nline two", "3"]);
    // list and export: the same columns; --select names them.
    let o = env
        .run(&[
            "list",
            "crm.lead.list",
            "--select",
            "TITLE,ID",
            "-o",
            "csv",
            "-p",
            r#"{"filter":{"<=ID":5}}"#,
        ])
        .await;
    assert_eq!(csv_rows(&o).0, vec!["TITLE", "ID"]);
    assert_eq!(csv_rows(&o).1.len(), 5);
    let o = env
        .run(&[
            "export",
            "crm.lead.list",
            "--select",
            "TITLE",
            "-o",
            "csv",
            "--filter",
            r#"{"<=ID":5}"#,
        ])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let (h, rows) = csv_rows(&o);
    assert_eq!(h, vec!["ID", "TITLE"], "the ID is exported, so it is shown");
    assert_eq!(rows.len(), 5);

    // NDJSON: one record a line.
    let o = env
        .run(&["list", "crm.lead.list", "-p", sel, "-o", "ndjson"])
        .await;
    let ls: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(ls.len(), 5);
    assert_eq!(ls[0]["ID"], "1");

    // Table: fitted to COLUMNS, every record shown.
    let mut narrow = Env::webhook(&sb);
    narrow.set("COLUMNS", "50");
    let o = narrow
        .run(&[
            "call",
            "crm.lead.list",
            "-p",
            r#"{"select":["ID","TITLE","NAME","LAST_NAME","STATUS_ID","SOURCE_ID","OPPORTUNITY"],"filter":{"<=ID":5}}"#,
            "-o",
            "table",
        ])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let t = stdout(&o);
    assert!(t.contains("TITLE"), "{t}");
    for l in t.lines() {
        assert!(l.chars().count() <= 50, "wider than 50: {l:?}\n{t}");
    }
    for id in 1..=5 {
        assert!(t.contains(&format!(" {id} ")), "row {id}: {t}");
    }

    // Records of other commands.
    let o = env
        .run(&["methods", "--search", "crm.deal.", "-o", "csv"])
        .await;
    let (h, rows) = csv_rows(&o);
    assert_eq!(h[0], "name");
    assert!(rows.iter().any(|r| r[0] == "crm.deal.add"));
    let o = env.run(&["audit", "tail", "-n", "3", "-o", "json"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(json(&o).as_array().unwrap().len(), 3);
    let o = env
        .run_stdin(
            &["batch", "-", "-o", "csv"],
            "\"crm.lead.get?id=1\"\n\"crm.lead.get?id=999\"\n",
        )
        .await;
    let (h, rows) = csv_rows(&o);
    assert_eq!(h, vec!["key", "status", "result", "error", "reason"]);
    assert_eq!(rows[0][1], "ok");
    assert_eq!(rows[1][1], "error");
    // An unknown format is a usage error.
    let o = env.run(&["call", "user.current", "-o", "xml"]).await;
    assert_eq!(code(&o), 2);
}
