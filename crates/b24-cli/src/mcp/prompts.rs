//! Prompts for the common tasks: each fills in the person's request and lays out the safe
//! path through the tools, with links to the skill's references (see [`super::resources`]).
//!
//! Why prompts: a host shows them as ready-made tasks ("update a CRM record"), and the steps
//! they spell out are the reviewed ones (look before writing, plan then apply, page with a
//! cursor), so the model starts on the guarded path instead of discovering it by refusals.

use rmcp::ErrorData;
use rmcp::model::{
    ContentBlock, GetPromptResult, JsonObject, ListPromptsResult, Prompt, PromptArgument,
    PromptMessage, Resource, Role,
};
use serde_json::Value;

use super::resources::{MARKDOWN, uri};

struct Arg {
    name: &'static str,
    about: &'static str,
    required: bool,
}

struct Task {
    name: &'static str,
    title: &'static str,
    about: &'static str,
    args: &'static [Arg],
    /// The references the task points at (paths under `b24://skill/`).
    refs: &'static [&'static str],
}

const fn arg(name: &'static str, about: &'static str, required: bool) -> Arg {
    Arg {
        name,
        about,
        required,
    }
}

const TASKS: &[Task] = &[
    Task {
        name: "update_crm_record",
        title: "Find and update a CRM record safely",
        about: "Find one CRM record, show the change, and apply it through a reviewed plan (b24_plan, then b24_apply).",
        args: &[
            arg(
                "entity",
                "The CRM entity: lead, deal, contact, company (or a smart-process type id).",
                true,
            ),
            arg(
                "find",
                "How to recognise the record, e.g. `title contains Acme` or `ID 42`.",
                true,
            ),
            arg(
                "change",
                "What to change, e.g. `stage to WON` or `phone to +1 555 0100`.",
                true,
            ),
        ],
        refs: &["playbook", "packs/core"],
    },
    Task {
        name: "export_list",
        title: "Export a list",
        about: "Fetch every record of a list method in pages with b24_export and its resume cursor.",
        args: &[
            arg(
                "method",
                "The list method, e.g. `crm.deal.list` or `user.get`.",
                true,
            ),
            arg(
                "filter",
                "Which records, in words or as a Bitrix24 filter object.",
                false,
            ),
            arg(
                "fields",
                "Which fields to keep, e.g. `ID, TITLE, STAGE_ID`.",
                false,
            ),
        ],
        refs: &["playbook", "recipes"],
    },
    Task {
        name: "setup_event_handling",
        title: "Set up event handling",
        about: "Subscribe to a Bitrix24 event and process it reliably with b24's receiver and queue.",
        args: &[
            arg(
                "event",
                "The event, e.g. `ONCRMDEALADD` or `ONTASKUPDATE`.",
                true,
            ),
            arg(
                "handler_url",
                "The public URL that will receive the events, if there is one already.",
                false,
            ),
        ],
        refs: &["recipes", "setup", "packs/core"],
    },
    Task {
        name: "diagnose_error",
        title: "Diagnose an error",
        about: "Explain a Bitrix24 or b24 error and find the fix, without repeating a write blindly.",
        args: &[
            arg(
                "error",
                "The error as shown: a code like `insufficient_scope`, or the whole message.",
                true,
            ),
            arg("method", "The method that failed, if known.", false),
        ],
        refs: &["playbook", "packs/diagnostics", "setup"],
    },
];

/// prompts/list.
pub fn list() -> ListPromptsResult {
    let prompts = TASKS
        .iter()
        .map(|t| {
            let args = t
                .args
                .iter()
                .map(|a| {
                    PromptArgument::new(a.name)
                        .with_description(a.about)
                        .with_required(a.required)
                })
                .collect();
            let mut p = Prompt::new(t.name, Some(t.about), Some(args));
            p.title = Some(t.title.to_string());
            p
        })
        .collect();
    ListPromptsResult::with_all_items(prompts)
}

/// The steps of a task, with the person's arguments filled in.
fn steps(name: &str, a: &dyn Fn(&str) -> String) -> String {
    match name {
        "update_crm_record" => format!(
            "Update a CRM {entity}: the one matching \"{find}\". Change: {change}.\n\n\
             1. b24_describe `crm.{entity}.list` and `crm.{entity}.update` (fields, risk, the confirmation needed). For a smart process use `crm.item.list` / `crm.item.update` with its entityTypeId.\n\
             2. Find the record with b24_read `crm.{entity}.list` and a `filter` plus a small `select`. Exactly one must match: if none or several do, stop and ask the person which one.\n\
             3. Read its current values (b24_read `crm.{entity}.get`) and show the person old and new values side by side.\n\
             4. b24_plan `crm.{entity}.update` with {{\"id\": <ID>, \"fields\": {{...}}}}: nothing is sent; show the plan.\n\
             5. Only after the person agrees: b24_apply {{\"plan_id\": ...}}. It runs once; repeating it never writes twice.\n\
             6. Read the record again and report the result.\n\
             A refusal (isError) says why and what would fix it; never work around the operator's policy.",
            entity = a("entity"),
            find = a("find"),
            change = a("change"),
        ),
        "export_list" => format!(
            "Export `{method}`{filter}{fields}.\n\n\
             1. b24_describe `{method}`: it must be a read-only list method; note its fields and filter syntax.\n\
             2. b24_export with `params` (`filter`, `select`) and `max_items` (up to 5000 per call).\n\
             3. While the answer says `more: true`, call b24_export again with the same params and its `cursor`; items never repeat or go missing between calls.\n\
             4. Report the count and what was exported. For very large lists, suggest the CLI: `b24 export {method} --out FILE` resumes after an interruption.",
            method = a("method"),
            filter = opt(&a("filter"), ", records matching: "),
            fields = opt(&a("fields"), ", fields: "),
        ),
        "setup_event_handling" => format!(
            "Handle the Bitrix24 event `{event}`{url}.\n\n\
             1. b24_search_methods `event` and b24_describe `event.bind`: binding events needs an OAuth application for most events (a webhook gets WRONG_AUTH_TYPE).\n\
             2. The receiver is the CLI, not a tool: `b24 events serve` takes the portal's calls, checks their application token and queues them; `b24 worker` runs the handler. See the recipes for the commands and the offline-event (ONOFFLINEEVENT) alternative that needs no public URL.\n\
             3. Plan the binding: b24_plan `event.bind` with {{\"event\": \"{event}\", \"handler\": <URL>}}, show it, and b24_apply after the person agrees.\n\
             4. Check with b24_read `event.get`, and watch the queue with b24_queue_status (ready, processed, dead letters).",
            event = a("event"),
            url = opt(&a("handler_url"), ", delivered to "),
        ),
        "diagnose_error" => format!(
            "Diagnose this error{method}: {error}\n\n\
             1. If it came from a b24 tool, its isError result already carries `code`, `meaning` and `fix`: start there.\n\
             2. b24_describe the method: its scope, who may call it, and `common_errors` with their fixes.\n\
             3. Scope and auth errors (insufficient_scope, NO_AUTH_FOUND, WRONG_AUTH_TYPE, ACCESS_DENIED) are fixed in the portal's webhook or app settings, not by retrying; the operator can run `b24 doctor`.\n\
             4. outcome_unknown means a write may or may not have happened: read the record before anything else, never repeat the write blindly.\n\
             5. A refusal from b24 (error `refused`) is the operator's policy: explain it, do not work around it.\n\
             Tell the person the cause and the fix in plain words.",
            error = a("error"),
            method = match a("method") {
                m if m.is_empty() => m,
                m => format!(" in `{m}`"),
            },
        ),
        _ => String::new(),
    }
}

/// `prefix + value` when a value was given.
fn opt(value: &str, prefix: &str) -> String {
    if value.is_empty() {
        String::new()
    } else {
        format!("{prefix}{value}")
    }
}

/// The longest value one prompt argument may have, in bytes (a record's description or an error
/// message fits; a pasted document does not belong in a prompt).
pub const MAX_ARG_BYTES: usize = 4096;
/// The most arguments one prompts/get may carry (no prompt takes more than a few).
pub const MAX_ARGS: usize = 8;

/// At most `max` characters of `s`, for echoing a caller's text back in an error.
fn shorten(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// prompts/get: the task with its arguments filled in, then links to its references. An
/// unknown prompt, a missing required argument, an unknown argument, more than [`MAX_ARGS`]
/// arguments or one longer than [`MAX_ARG_BYTES`] is `-32602` (nothing is filled in).
pub fn get(name: &str, args: Option<&JsonObject>) -> Result<GetPromptResult, ErrorData> {
    let Some(task) = TASKS.iter().find(|t| t.name == name) else {
        let names: Vec<&str> = TASKS.iter().map(|t| t.name).collect();
        return Err(ErrorData::invalid_params(
            format!(
                "no prompt {:?}; b24 has: {}",
                shorten(name, 64),
                names.join(", ")
            ),
            None,
        ));
    };
    let empty = JsonObject::new();
    let given = args.unwrap_or(&empty);
    if given.len() > MAX_ARGS {
        return Err(ErrorData::invalid_params(
            format!(
                "prompt {name} got {} arguments; it takes at most {} (limit {MAX_ARGS})",
                given.len(),
                task.args.len()
            ),
            None,
        ));
    }
    if let Some(k) = given
        .keys()
        .find(|k| !task.args.iter().any(|a| a.name == *k))
    {
        return Err(ErrorData::invalid_params(
            format!("prompt {name} takes no argument {:?}", shorten(k, 64)),
            None,
        ));
    }
    for (k, v) in given {
        let len = match v {
            Value::String(s) => s.len(),
            Value::Null => 0,
            other => other.to_string().len(),
        };
        if len > MAX_ARG_BYTES {
            return Err(ErrorData::invalid_params(
                format!(
                    "prompt {name}: the argument {k:?} is {len} bytes; at most {MAX_ARG_BYTES} are taken"
                ),
                None,
            ));
        }
    }
    let value = |k: &str| -> String {
        match given.get(k) {
            Some(Value::String(s)) => s.trim().to_string(),
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        }
    };
    for a in task.args.iter().filter(|a| a.required) {
        if value(a.name).is_empty() {
            return Err(ErrorData::invalid_params(
                format!("prompt {name} needs the argument {:?}: {}", a.name, a.about),
                None,
            ));
        }
    }
    let refs: Vec<String> = task.refs.iter().map(|r| uri(r)).collect();
    let text = format!(
        "{}\n\nReferences (MCP resources): {}",
        steps(name, &value),
        refs.join(", ")
    );
    let mut messages = vec![PromptMessage::new_text(Role::User, text)];
    for r in task.refs {
        let link = Resource::new(uri(r), r.replace('/', "-")).with_mime_type(MARKDOWN);
        messages.push(PromptMessage::new(
            Role::User,
            ContentBlock::resource_link(link),
        ));
    }
    Ok(GetPromptResult::new(messages).with_description(task.about))
}
