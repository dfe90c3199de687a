//! The skill as MCP resources and the common tasks as MCP prompts, read by a real client.
//!
//! A module of `tests/it/mcp.rs`, so it uses its helpers.

use std::path::{Path, PathBuf};

use rmcp::model::{GetPromptRequestParams, ReadResourceRequestParams, ResourceContents};

use super::*;

fn references() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../skills/bitrix24-agent/references")
}

/// Every reference file of the skill, as (URI, exact text).
fn reference_files() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (dir, prefix) in [(references(), ""), (references().join("packs"), "packs/")] {
        for e in std::fs::read_dir(&dir).expect("references dir") {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "md") {
                let stem = p.file_stem().unwrap().to_string_lossy().to_string();
                let text = std::fs::read_to_string(&p).unwrap();
                out.push((format!("b24://skill/{prefix}{stem}"), text));
            }
        }
    }
    out.sort();
    out
}

async fn read(client: &Client, uri: &str) -> Result<String, ErrorData> {
    let r = client
        .read_resource(ReadResourceRequestParams::new(uri))
        .await
        .map_err(|e| match e {
            rmcp::ServiceError::McpError(e) => e,
            other => panic!("{uri}: {other}"),
        })?;
    assert_eq!(r.contents.len(), 1, "{uri}");
    match &r.contents[0] {
        ResourceContents::TextResourceContents {
            uri: got,
            mime_type,
            text,
            ..
        } => {
            assert_eq!(got, uri);
            assert_eq!(mime_type.as_deref(), Some("text/markdown"), "{uri}");
            Ok(text.clone())
        }
        other => panic!("{uri}: not text: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_skill_reference_is_a_resource_with_its_exact_text() {
    let env = Env::bare();
    let client = connect(&env).await;
    let caps = client.peer_info().unwrap().capabilities.clone();
    assert!(
        caps.resources.is_some() && caps.prompts.is_some(),
        "{caps:?}"
    );
    let listed = client.list_all_resources().await.expect("resources/list");
    let mut uris: Vec<String> = listed.iter().map(|r| r.uri.clone()).collect();
    uris.sort();
    let files = reference_files();
    let want: Vec<String> = files.iter().map(|f| f.0.clone()).collect();
    assert_eq!(uris, want, "resources/list must offer every reference file");
    for u in [
        "b24://skill/playbook",
        "b24://skill/recipes",
        "b24://skill/scenarios",
        "b24://skill/packs/core",
        "b24://skill/packs/comms",
    ] {
        assert!(uris.contains(&u.to_string()), "{u}");
    }
    for r in &listed {
        assert_eq!(r.mime_type.as_deref(), Some("text/markdown"), "{}", r.uri);
        assert!(r.title.is_some() && r.description.is_some(), "{}", r.uri);
    }
    for (uri, text) in &files {
        let got = read(&client, uri).await.expect("read");
        assert!(got == *text, "{uri}: the resource differs from the file");
        let size = listed.iter().find(|r| &r.uri == uri).unwrap().size;
        assert_eq!(size, Some(text.len() as u64), "{uri}");
    }
    // The pack template names every pack.
    let templates = client
        .list_all_resource_templates()
        .await
        .expect("templates");
    assert_eq!(templates.len(), 1);
    assert_eq!(templates[0].uri_template, "b24://skill/packs/{pack}");
    let about = templates[0].description.clone().unwrap_or_default();
    assert!(about.contains("core") && about.contains("comms"), "{about}");
    // Unknown URIs (including a pack that does not exist and paths that try to leave the
    // folder) are -32002 Resource not found, and the server keeps serving.
    for bad in [
        "b24://skill/packs/nope",
        "b24://skill/../SKILL",
        "b24://skill/packs/../../SKILL",
        "file:///etc/passwd",
        "b24://skill/",
    ] {
        let e = read(&client, bad).await.expect_err(bad);
        assert_eq!(
            e.code,
            rmcp::model::ErrorCode::RESOURCE_NOT_FOUND,
            "{bad}: {e:?}"
        );
        assert!(e.message.contains("resources/list"), "{}", e.message);
    }
    assert!(read(&client, "b24://skill/playbook").await.is_ok());
    client.cancel().await.ok();
}

async fn get_prompt(
    client: &Client,
    name: &str,
    args: Value,
) -> Result<rmcp::model::GetPromptResult, ErrorData> {
    let Value::Object(args) = args else {
        panic!("arguments must be an object")
    };
    let mut p = GetPromptRequestParams::new(name);
    p.arguments = Some(args);
    client.get_prompt(p).await.map_err(|e| match e {
        rmcp::ServiceError::McpError(e) => e,
        other => panic!("{name}: {other}"),
    })
}

fn prompt_text(r: &rmcp::model::GetPromptResult) -> String {
    r.messages
        .iter()
        .filter_map(|m| m.content.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn prompts_fill_in_their_arguments_and_point_at_tools_and_resources() {
    let env = Env::bare();
    let client = connect(&env).await;
    let prompts = client.list_all_prompts().await.expect("prompts/list");
    let mut names: Vec<&str> = prompts.iter().map(|p| p.name.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "diagnose_error",
            "export_list",
            "setup_event_handling",
            "update_crm_record"
        ]
    );
    for p in &prompts {
        let args = p.arguments.clone().unwrap_or_default();
        assert!(
            args.iter().any(|a| a.required == Some(true)),
            "{} has no required argument",
            p.name
        );
        assert!(args.iter().all(|a| a.description.is_some()), "{}", p.name);
    }
    let resources: Vec<String> = client
        .list_all_resources()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.uri)
        .collect();

    let r = get_prompt(
        &client,
        "update_crm_record",
        json!({"entity": "deal", "find": "title contains Acme", "change": "stage to WON"}),
    )
    .await
    .expect("prompt");
    let t = prompt_text(&r);
    for want in [
        "crm.deal.list",
        "crm.deal.update",
        "title contains Acme",
        "stage to WON",
        "b24_plan",
        "b24_apply",
        "b24://skill/packs/core",
    ] {
        assert!(t.contains(want), "missing {want}: {t}");
    }
    // The linked resources exist.
    let links: Vec<String> = r
        .messages
        .iter()
        .filter_map(|m| m.content.as_resource_link().map(|l| l.uri.clone()))
        .collect();
    assert!(!links.is_empty());
    for l in &links {
        assert!(resources.contains(l), "{l} is not a resource");
    }

    let r = get_prompt(&client, "export_list", json!({"method": "crm.lead.list"}))
        .await
        .expect("optional arguments may be left out");
    let t = prompt_text(&r);
    assert!(
        t.contains("b24_export") && t.contains("cursor") && t.contains("crm.lead.list"),
        "{t}"
    );
    let r = get_prompt(
        &client,
        "setup_event_handling",
        json!({"event": "ONCRMDEALADD"}),
    )
    .await
    .unwrap();
    let t = prompt_text(&r);
    assert!(
        t.contains("ONCRMDEALADD") && t.contains("b24_queue_status"),
        "{t}"
    );
    let r = get_prompt(
        &client,
        "diagnose_error",
        json!({"error": "insufficient_scope", "method": "crm.deal.list"}),
    )
    .await
    .unwrap();
    let t = prompt_text(&r);
    assert!(
        t.contains("insufficient_scope")
            && t.contains("in `crm.deal.list`")
            && t.contains("b24_describe"),
        "{t}"
    );

    // A missing (or blank) required argument, an unknown argument, an unknown prompt: -32602.
    for (name, args, says) in [
        (
            "update_crm_record",
            json!({"entity": "deal", "find": "ID 1"}),
            "change",
        ),
        (
            "update_crm_record",
            json!({"entity": " ", "find": "ID 1", "change": "x"}),
            "entity",
        ),
        ("export_list", json!({}), "method"),
        (
            "export_list",
            json!({"method": "crm.lead.list", "limit": 5}),
            "limit",
        ),
        ("nope", json!({}), "update_crm_record"),
    ] {
        let e = get_prompt(&client, name, args.clone())
            .await
            .expect_err(name);
        assert_eq!(
            e.code,
            rmcp::model::ErrorCode::INVALID_PARAMS,
            "{name} {args}: {e:?}"
        );
        assert!(e.message.contains(says), "{name} {args}: {}", e.message);
    }
    client.cancel().await.ok();
}
