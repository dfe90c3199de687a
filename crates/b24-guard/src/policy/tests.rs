//! Unit tests of policy layers: narrowing, globs, refusals and their messages.

use super::*;
use crate::catalog::Catalog;

fn check(p: &Policy, m: &str, cw: bool, cd: bool) -> Result<Risk, Refusal> {
    p.check(
        Catalog::builtin(),
        &CallCheck {
            method: m,
            confirm_write: cw,
            confirm_destructive: cd,
            ..Default::default()
        },
    )
}

#[test]
fn confirmations() {
    let p = Policy::new(None, None, AgentPolicy::default()).unwrap();
    assert_eq!(check(&p, "crm.lead.list", false, false), Ok(Risk::Read));
    let r = check(&p, "crm.lead.add", false, false).unwrap_err();
    assert!(
        r.fix.contains("--confirm-write") && r.fix.contains("b24 plan crm.lead.add"),
        "{r}"
    );
    assert_eq!(check(&p, "crm.lead.add", true, false), Ok(Risk::Write));
    let r = check(&p, "crm.lead.delete", true, false).unwrap_err();
    assert!(r.fix.contains("--confirm-destructive"), "{r}");
    assert_eq!(
        check(&p, "crm.lead.delete", false, true),
        Ok(Risk::Destructive)
    );
    assert_eq!(
        check(&p, "made.up.method", false, true),
        Ok(Risk::Destructive)
    );
    let strict = Policy::new(
        None,
        None,
        AgentPolicy {
            strict: true,
            ..Default::default()
        },
    )
    .unwrap();
    let r = check(&strict, "made.up.method", false, true).unwrap_err();
    assert!(
        r.fix.contains("--allow-unlisted") && r.reason.contains("unknown"),
        "{r}"
    );
}

#[test]
fn operator_cannot_be_loosened() {
    let op = PolicyFile {
        deny_destructive: true,
        require_plan_for_writes: true,
        forbid_allow_unlisted: true,
        ..Default::default()
    };
    let agent = AgentPolicy {
        allow_unlisted: true,
        ..Default::default()
    };
    let p = Policy::new(Some(op), Some("/etc/b24/policy.toml".into()), agent).unwrap();
    let r = check(&p, "crm.lead.delete", true, true).unwrap_err();
    assert!(
        r.operator_locked && r.fix.contains("no flag can allow it"),
        "{r}"
    );
    let r = check(&p, "crm.lead.add", true, true).unwrap_err();
    assert!(r.fix.contains("b24 plan"), "{r}");
    let ok = p.check(
        Catalog::builtin(),
        &CallCheck {
            method: "crm.lead.add",
            confirm_write: true,
            via_plan: true,
            ..Default::default()
        },
    );
    assert_eq!(ok, Ok(Risk::Write));
    assert!(
        check(&p, "made.up", true, true)
            .unwrap_err()
            .operator_locked
    );
}

#[test]
fn a_callers_forbid_allow_unlisted_is_not_lifted_by_allow_unlisted() {
    let client = Layer::new(
        LayerKind::Caller,
        "MCP client x (x.toml)",
        PolicyFile {
            forbid_allow_unlisted: true,
            ..Default::default()
        },
    )
    .unwrap();
    let p = Policy {
        layers: vec![client],
        allow_unlisted: true,
    };
    let r = check(&p, "made.up.method", true, true).unwrap_err();
    assert!(r.fix.contains("x.toml") && !r.operator_locked, "{r}");
    assert_eq!(check(&p, "crm.lead.list", false, false), Ok(Risk::Read));
}

#[test]
fn every_layer_must_pass() {
    let op = Layer::new(
        LayerKind::Operator,
        "/etc/b24/policy.toml",
        PolicyFile {
            deny: vec!["crm.lead.delete".into()],
            ..Default::default()
        },
    )
    .unwrap();
    let narrow = Layer::new(
        LayerKind::Caller,
        "--env-file x.env",
        PolicyFile {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    let widen = Layer::new(
        LayerKind::Caller,
        "flags",
        PolicyFile {
            allow: vec!["*".into()],
            ..Default::default()
        },
    )
    .unwrap();
    let p = Policy {
        layers: vec![op, narrow, widen],
        allow_unlisted: true,
    };
    assert!(
        check(&p, "crm.lead.delete", true, true)
            .unwrap_err()
            .operator_locked
    );
    let r = check(&p, "crm.lead.add", true, true).unwrap_err();
    assert!(
        r.reason.contains("read-only") && r.reason.contains("x.env"),
        "{r}"
    );
    assert_eq!(check(&p, "crm.lead.list", false, false), Ok(Risk::Read));
}

#[test]
fn globs_and_packs() {
    let p = Policy::new(
        None,
        None,
        AgentPolicy {
            packs: Some(vec!["core".into()]),
            deny: vec!["crm.deal.*".into()],
            ..Default::default()
        },
    )
    .unwrap();
    assert!(check(&p, "crm.deal.list", false, false).is_err());
    assert!(check(&p, "crm.lead.list", false, false).is_ok());
    let r = check(&p, "bizproc.workflow.kill", false, true).unwrap_err();
    assert!(r.fix.contains("automation"), "{r}");
    let op = PolicyFile {
        read_only: true,
        ..Default::default()
    };
    let p = Policy::new(Some(op), None, AgentPolicy::default()).unwrap();
    assert!(
        check(&p, "crm.lead.add", true, true)
            .unwrap_err()
            .operator_locked
    );
}

#[test]
fn bad_files_and_globs_fail_closed() {
    let path = Path::new("/etc/b24/policy.toml");
    let e = PolicyFile::parse("read_only = true\ndeny = [\"crm.{lead\"]\n", path).unwrap_err();
    assert!(e.to_string().contains("/etc/b24/policy.toml:2"), "{e}");
    let e = PolicyFile::parse("read_only = true\nreadonly = true\n", path).unwrap_err();
    assert!(e.to_string().contains("policy.toml:2"), "{e}");
    let e = PolicyFile::parse("read_only = \"yes\"\n", path).unwrap_err();
    assert!(e.to_string().contains("policy.toml:1"), "{e}");
    let e = Policy::new(
        None,
        None,
        AgentPolicy {
            deny: vec!["[".into()],
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("invalid glob"), "{e}");
    // a caller layer cannot move the operator's evidence
    let l = Layer::new(
        LayerKind::Caller,
        "x",
        PolicyFile {
            guard_dir: Some("/tmp".into()),
            audit_params: Some(AuditParams::Full),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(l.rules.guard_dir.is_none() && l.rules.audit_params.is_none());
}
