//! One app installed on several sandbox portals through the real receiver (`b24 events
//! serve`): the setup the many-portal tests share.

use super::Env;

/// `b24 events serve` on a free port, killed on drop.
pub struct Receiver {
    child: std::process::Child,
    /// Its address, as a portal's install and uninstall POST it.
    pub url: String,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An app's settings (one client id, secret and OAuth server for every portal: here the
/// first portal's endpoint stands for oauth.bitrix.info) and its receiver, with the app
/// installed on the first `installed` portals.
pub async fn app_on(ps: &b24_sandbox::Portals, installed: usize) -> (Env, Receiver) {
    let i0 = ps.get(0).unwrap().info().clone();
    let mut env = Env::bare();
    env.set("B24_CLIENT_ID", &i0.client_id);
    env.set("B24_CLIENT_SECRET", &i0.client_secret);
    env.set("B24_OAUTH_TOKEN_URL", &i0.oauth_token_url);
    let mut child = env
        .cmd(&[
            "events",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--allow-portal",
            "127.0.0.1:*",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    {
        use std::io::BufRead;
        let out = child.stdout.as_mut().unwrap();
        std::io::BufReader::new(out).read_line(&mut line).unwrap();
    }
    let url = serde_json::from_str::<serde_json::Value>(&line).unwrap()["listening"]
        .as_str()
        .unwrap()
        .to_string();
    let rx = Receiver { child, url };
    for p in ps.iter().take(installed) {
        assert_eq!(p.install_app(&rx.url).await.status, 200);
    }
    (env, rx)
}
