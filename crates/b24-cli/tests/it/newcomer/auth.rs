//! The OAuth cycle `b24 auth login → status → call → logout` against the sandbox's OAuth
//! server (the browser simulated with reqwest), and a login with a pasted code.
//!
//! A module of `tests/it/newcomer.rs`, so it uses its helpers.

use super::*;

/// Env for OAuth with the app's credentials but no tokens: they must come from `auth login`.
fn oauth_app_env(sb: &Sandbox) -> Env {
    let i = sb.info();
    let mut e = Env::bare();
    e.set("B24_AUTH_MODE", "oauth");
    e.set("B24_DOMAIN", &i.base_url);
    e.set("B24_CLIENT_ID", &i.client_id);
    e.set("B24_CLIENT_SECRET", &i.client_secret);
    e.set("B24_OAUTH_TOKEN_URL", &i.oauth_token_url);
    e
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_login_status_call_logout_against_the_sandbox_oauth_server() {
    let sb = sandbox_with_leads(2).await;
    let env = oauth_app_env(&sb);
    // Before login, a call has no token.
    let o = env.run(&["call", "user.current"]).await;
    assert_eq!(code(&o), 5, "{}", stderr(&o));

    // Login: read the authorize URL from stderr and play the browser (follow the redirect).
    let mut child = env
        .cmd(&["auth", "login", "--no-browser", "--timeout", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr_pipe = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr_pipe).lines() {
            let line = line.unwrap();
            if let Some(u) = line
                .split_whitespace()
                .find(|w| w.contains("/oauth/authorize/"))
            {
                let _ = tx.send(u.to_string());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let url = tokio::task::spawn_blocking(move || {
        rx.recv_timeout(Duration::from_secs(20))
            .expect("authorize URL on stderr")
    })
    .await
    .unwrap();
    assert!(url.starts_with(sb.base_url()), "{url}");
    assert!(
        url.contains("state=") && url.contains("redirect_uri="),
        "{url}"
    );
    // A callback with a forged state is ignored (answered 400, login keeps waiting).
    let parsed = url::Url::parse(&url).unwrap();
    let redirect = parsed
        .query_pairs()
        .find(|(k, _)| k == "redirect_uri")
        .unwrap()
        .1
        .to_string();
    let forged = reqwest::get(format!("{redirect}?code=forged&state=nope"))
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 400);
    let page = reqwest::get(&url).await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.text().await.unwrap().contains("authorized"));
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let err = reader.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{err}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["logged_in"], true);
    assert_eq!(v["member_id"], sb.info().member_id.as_str());
    let token_file = std::path::PathBuf::from(v["token_file"].as_str().unwrap());
    assert!(token_file.starts_with(env.state_dir()));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let stored: Value = serde_json::from_slice(&std::fs::read(&token_file).unwrap()).unwrap();
    let (access, refresh) = (
        stored["access_token"].as_str().unwrap().to_string(),
        stored["refresh_token"].as_str().unwrap().to_string(),
    );
    assert!(!access.is_empty() && !refresh.is_empty());
    let everything = format!("{}{err}", String::from_utf8_lossy(&out.stdout));
    for s in [&access, &refresh, &sb.info().client_secret] {
        assert!(!everything.contains(s.as_str()), "login printed a secret");
    }
    assert_eq!(sb.stats().code_exchanges, 1);

    // Status: portal, member id, scopes, expiry, path — never the tokens.
    let o = env.run(&["auth", "status"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let st = json(&o);
    assert_eq!(st["logged_in"], true);
    assert!(st["scopes"].as_array().unwrap().iter().any(|s| s == "crm"));
    assert!(st["expires_in_secs"].as_i64().unwrap() > 0);
    let all = format!("{}{}", stdout(&o), stderr(&o));
    assert!(
        !all.contains(&access) && !all.contains(&refresh),
        "status never prints a token"
    );

    // Without a portal named, status lists every stored pair (still no tokens).
    let mut anywhere = Env::bare();
    anywhere.set("B24_STATE_DIR", env.state_dir().to_str().unwrap());
    let o = anywhere.run(&["auth", "status"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let line: Value = serde_json::from_str(stdout(&o).lines().next().unwrap()).unwrap();
    assert_eq!(line["member_id"], sb.info().member_id.as_str());
    assert!(!stdout(&o).contains(&access) && !stdout(&o).contains(&refresh));

    // A call works with the stored token (no token in the environment).
    let o = env.run(&["call", "user.current"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(json(&o)["ID"], "1");

    // Logout deletes the pair; status and calls then say so.
    let o = env.run(&["auth", "logout"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(json(&o)["removed"], true);
    assert!(!token_file.exists());
    let o = env.run(&["auth", "status"]).await;
    assert_eq!(code(&o), 5);
    assert_eq!(json(&o)["logged_in"], false);
    let o = env.run(&["call", "user.current"]).await;
    assert_eq!(code(&o), 5, "{}", stderr(&o));
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_login_with_a_pasted_code_and_clear_failures() {
    let sb = sandbox_with_leads(0).await;
    let env = oauth_app_env(&sb);
    // No browser here: the user opened the authorize URL elsewhere and got a code.
    let body: Value = reqwest::get(format!(
        "{}?client_id={}&state=x",
        sb.info().oauth_authorize_url,
        sb.info().client_id
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let pasted = body["code"].as_str().unwrap().to_string();
    let o = env.run(&["auth", "login", "--code", &pasted]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(json(&o)["logged_in"], true);
    assert_no_secrets(&sb, &o);
    let o = env.run(&["call", "crm.lead.list"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));

    // The same code again: refused, with the reason and the fix.
    let o = env.run(&["auth", "login", "--code", &pasted]).await;
    assert_eq!(code(&o), 5);
    assert!(stderr(&o).contains("invalid_grant"), "{}", stderr(&o));

    // No --code and nobody opens the URL: fails after --timeout, never prompts.
    let o = env
        .run(&["auth", "login", "--no-browser", "--timeout", "1"])
        .await;
    assert_eq!(code(&o), 5);
    assert!(stderr(&o).contains("--code"), "{}", stderr(&o));

    // No app secret: a usage error that names the variable.
    let mut bare = Env::bare();
    bare.set("B24_DOMAIN", sb.base_url());
    bare.set("B24_CLIENT_ID", &sb.info().client_id);
    let o = bare.run(&["auth", "login", "--code", "x"]).await;
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("B24_CLIENT_SECRET"));
}
