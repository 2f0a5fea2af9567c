//! The admin guard over real HTTP: IP allow-list, trusted proxies, IPv6, password
//! login, CSRF; the admin JSON API for scripts; the rules the panel, the admin API
//! and the CLI share; editing a channel's config, retrying and replaying deliveries,
//! closing and reopening conversations from the panel.

use reqwest::header::{COOKIE, HOST, LOCATION, RETRY_AFTER, SET_COOKIE};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{Backend, TestApp, both_backends, expect_data, expect_error};

both_backends!(
    allow_list_and_forwarded_for,
    password_login_and_bearer_for_scripts,
    forms_need_the_csrf_token,
    admin_api_onboards_a_tenant,
    tenant_name_rule_is_the_same_for_cli_api_and_form,
    tenant_names_are_unique_without_case_in_cli_api_and_form,
    junk_forwarded_for_behind_a_trusted_proxy_is_refused,
    other_host_names_get_no_answer,
    wrong_passwords_are_limited_per_address,
    same_site_json_posts_need_the_csrf_token,
    a_new_admin_password_ends_old_sessions,
    logged_out_sessions_stay_out,
    the_panel_edits_a_channel_config_as_the_api_validates,
    the_panel_retries_now_replays_and_shows_attempts,
    the_panel_closes_and_reopens_a_conversation,
);

/// After logout the old cookie, signed and unexpired, no longer opens the panel.
async fn logged_out_sessions_stay_out(backend: Backend) {
    let app =
        TestApp::start_with(backend, |c| c.admin_password = Some("correct horse".into())).await;
    let http = no_redirects();
    let url = |p: &str| format!("{}{p}", app.base);
    let session = log_in(&http, &app.base, "correct horse").await;
    let dashboard = http
        .get(url("/admin"))
        .header(COOKIE, &session)
        .send()
        .await
        .unwrap();
    assert_eq!(dashboard.status(), StatusCode::OK);
    let csrf = csrf_in(&dashboard.text().await.unwrap());
    let out = http
        .post(url("/admin/logout"))
        .header(COOKIE, &session)
        .form(&[("_csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    // The browser forgets the cookie; someone who copied it gets nothing either.
    let replayed = http
        .get(url("/admin"))
        .header(COOKIE, &session)
        .send()
        .await
        .unwrap();
    assert_eq!(replayed.status(), StatusCode::SEE_OTHER);
    assert_eq!(replayed.headers()[LOCATION], "/admin/login");
    let api = http
        .get(url("/admin/api/tenants"))
        .header(COOKIE, &session)
        .send()
        .await
        .unwrap();
    expect_error(api, StatusCode::UNAUTHORIZED, "admin_login_required").await;
}

/// A node restarted with another admin password does not take the sessions of the
/// old one.
async fn a_new_admin_password_ends_old_sessions(backend: Backend) {
    let (_db, url) = crate::common::TestDb::create(backend).await;
    let http = no_redirects();
    let start = |password: &'static str| {
        crate::common::node::Node::start_with(
            &url,
            &[("CONVERGER_ADMIN_PASSWORD", password)],
            std::process::Stdio::null(),
        )
    };
    let mut first = start("first password");
    first.ready(&http).await;
    let session = log_in(&http, &first.base, "first password").await;
    let dashboard = |base: String| {
        let (http, session) = (&http, &session);
        async move {
            http.get(format!("{base}/admin"))
                .header(COOKIE, session)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(dashboard(first.base.clone()).await, StatusCode::OK);
    first.kill();

    let second = start("second password");
    second.ready(&http).await;
    assert_eq!(dashboard(second.base.clone()).await, StatusCode::SEE_OTHER);
}

/// A sibling site's page can send a body-less POST with the operator's cookie; the
/// JSON API acts on it only with the session's CSRF token.
async fn same_site_json_posts_need_the_csrf_token(backend: Backend) {
    let app = TestApp::start(backend).await;
    let http = no_redirects();
    let page = http
        .get(format!("{}/admin/tenants", app.base))
        .send()
        .await
        .unwrap();
    let cookie = cookie_of(&page);
    let csrf = csrf_in(&page.text().await.unwrap());
    let (victim, victim_key) = app.create_tenant("victim").await;
    let rotate = format!("{}/admin/api/tenants/{victim}/rotate_key", app.base);
    let forged = http
        .post(&rotate)
        .header(COOKIE, &cookie)
        .header("sec-fetch-site", "same-site")
        .send()
        .await
        .unwrap();
    expect_error(forged, StatusCode::FORBIDDEN, "csrf_rejected").await;
    let wrong = http
        .post(&rotate)
        .header(COOKIE, &cookie)
        .header("sec-fetch-site", "same-site")
        .header("x-csrf-token", "not-the-token")
        .send()
        .await
        .unwrap();
    expect_error(wrong, StatusCode::FORBIDDEN, "csrf_rejected").await;
    // The key was not rotated.
    let still = app
        .with_key(&victim_key, Method::GET, "/api/v1/channels")
        .send()
        .await
        .unwrap();
    assert_eq!(still.status(), StatusCode::OK);
    // With the token it works, as it does for clients that are not browsers.
    let proven = http
        .post(&rotate)
        .header(COOKIE, &cookie)
        .header("sec-fetch-site", "same-site")
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(proven.status(), StatusCode::OK, "{:?}", proven.text().await);
    let script = http.post(&rotate).send().await.unwrap();
    assert_eq!(script.status(), StatusCode::OK);
}

/// DNS rebinding: a page on an attacker's name that resolves to this node sends
/// that name as `Host`; the panel does not answer it.
async fn other_host_names_get_no_answer(backend: Backend) {
    let app = TestApp::start(backend).await;
    for host in [
        "rebind.attacker.example",
        "rebind.attacker.example:4000",
        "localhost.attacker.example",
    ] {
        let response = app
            .anon(Method::POST, "/admin/api/tenants")
            .header(HOST, host)
            .json(&json!({"name": "rebound"}))
            .send()
            .await
            .unwrap();
        expect_error(
            response,
            StatusCode::MISDIRECTED_REQUEST,
            "admin_host_refused",
        )
        .await;
    }
    // A loopback name is answered, and nothing was created.
    let listed = app
        .anon(Method::GET, "/admin/api/tenants")
        .header(HOST, "localhost:4000");
    assert_no_tenant_named(listed, "rebound").await;
}

/// Ten wrong passwords from one address within a minute, then every password
/// attempt from it is refused with 429 (the right one too); other addresses are not
/// held up.
async fn wrong_passwords_are_limited_per_address(backend: Backend) {
    let app = TestApp::start_with(backend, |c| {
        c.admin_password = Some("correct horse".into());
        c.admin_allowed_ips =
            converger::access::parse_cidrs("127.0.0.1/32,203.0.113.0/24").unwrap();
        c.trusted_proxies = converger::access::parse_cidrs("127.0.0.1/32").unwrap();
    })
    .await;
    let attempt = |client: &'static str, password: &'static str| {
        app.anon(Method::GET, "/admin/api/tenants")
            .header("x-forwarded-for", client)
            .bearer_auth(password)
            .send()
    };
    for _ in 0..converger::access::PASSWORD_FAILURES {
        let response = attempt("203.0.113.1", "guess").await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    for password in ["guess", "correct horse"] {
        let response = attempt("203.0.113.1", password).await.unwrap();
        assert!(response.headers().contains_key(RETRY_AFTER));
        expect_error(response, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    }
    let response = attempt("203.0.113.2", "correct horse").await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

/// Behind a trusted proxy on loopback, with only loopback allowed: a forwarded
/// entry that is not an address makes the client unknown, never the proxy.
async fn junk_forwarded_for_behind_a_trusted_proxy_is_refused(backend: Backend) {
    let app = TestApp::start_with(backend, |c| {
        c.admin_allowed_ips = converger::access::parse_cidrs("127.0.0.1/32").unwrap();
        c.trusted_proxies = converger::access::parse_cidrs("127.0.0.1/32").unwrap();
    })
    .await;
    for xff in [
        "garbage, 10.0.0.5",
        "unknown, 10.0.0.5",
        ", 10.0.0.5",
        "10.0.0.5:4711",
        "[2001:db8::1]",
        "garbage",
        "unknown",
        "127.0.0.1, nonsense",
    ] {
        let response = app
            .anon(Method::POST, "/admin/api/tenants")
            .header("x-forwarded-for", xff)
            .json(&json!({"name": "sneaky"}))
            .send()
            .await
            .unwrap();
        expect_error(response, StatusCode::FORBIDDEN, "admin_forbidden").await;
    }
    // Nothing was created; the proxy itself (no header) still gets in.
    assert_no_tenant_named(app.anon(Method::GET, "/admin/api/tenants"), "sneaky").await;
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn tenant_count(app: &TestApp) -> usize {
    app.store.list_tenants().await.unwrap().len()
}

async fn allow_list_and_forwarded_for(backend: Backend) {
    // Loopback is allowed by default.
    let open = TestApp::start(backend).await;
    let resp = open.anon(Method::GET, "/admin").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    for (h, v) in [
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("x-content-type-options", "nosniff"),
    ] {
        assert_eq!(resp.headers()[h], v);
    }
    let csp = resp.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );

    // Only 10/8 allowed, no trusted proxy: loopback is refused, and a spoofed
    // X-Forwarded-For changes nothing.
    let closed = TestApp::start_with(backend, |c| {
        c.admin_allowed_ips = converger::access::parse_cidrs("10.0.0.0/8").unwrap()
    })
    .await;
    let before = tenant_count(&closed).await;
    for xff in [None, Some("10.1.2.3")] {
        let mut req = closed
            .anon(Method::POST, "/admin/api/tenants")
            .json(&json!({"name": "sneaky"}));
        if let Some(x) = xff {
            req = req.header("x-forwarded-for", x);
        }
        expect_error(
            req.send().await.unwrap(),
            StatusCode::FORBIDDEN,
            "admin_forbidden",
        )
        .await;
    }
    let page = closed
        .anon(Method::GET, "/admin/tenants")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        tenant_count(&closed).await,
        before,
        "refused requests touch nothing"
    );
    // The REST API is not behind the admin allow-list.
    assert_eq!(
        closed
            .req(Method::GET, "/api/v1/channels")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );

    // Behind a trusted proxy (the loopback peer), the forwarded client decides, IPv4
    // and IPv6 alike; the right-most untrusted address counts.
    let proxied = TestApp::start_with(backend, |c| {
        c.admin_allowed_ips = converger::access::parse_cidrs("10.0.0.0/8,2001:db8::/32").unwrap();
        c.trusted_proxies = converger::access::parse_cidrs("127.0.0.1/32").unwrap();
    })
    .await;
    let get = |xff: &'static str| {
        let app = &proxied;
        async move {
            app.anon(Method::GET, "/admin/api/stats")
                .header("x-forwarded-for", xff)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(get("10.1.2.3").await, StatusCode::OK);
    assert_eq!(get("2001:db8::5").await, StatusCode::OK);
    assert_eq!(get("203.0.113.7").await, StatusCode::FORBIDDEN);
    assert_eq!(get("2001:db9::1").await, StatusCode::FORBIDDEN);
    assert_eq!(
        get("10.1.2.3, 203.0.113.7").await,
        StatusCode::FORBIDDEN,
        "a client cannot prepend an allowed address"
    );
    assert_eq!(
        proxied
            .anon(Method::GET, "/admin/api/stats")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::FORBIDDEN
    );
}

/// Lists tenants through the admin API and asserts none has `name`.
async fn assert_no_tenant_named(list: reqwest::RequestBuilder, name: &str) {
    let tenants = expect_data(list.send().await.unwrap(), StatusCode::OK).await;
    assert!(
        tenants
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["name"] != name),
        "{tenants}"
    );
}

/// Logs in through the form with `password`; returns the session cookie.
async fn log_in(http: &reqwest::Client, base: &str, password: &str) -> String {
    let login = http
        .get(format!("{base}/admin/login"))
        .send()
        .await
        .unwrap();
    let cookie = cookie_of(&login);
    let csrf = csrf_in(&login.text().await.unwrap());
    let right = http
        .post(format!("{base}/admin/login"))
        .header(COOKIE, &cookie)
        .form(&[("_csrf", csrf.as_str()), ("password", password)])
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), StatusCode::SEE_OTHER);
    cookie_of(&right)
}

fn cookie_of(resp: &reqwest::Response) -> String {
    let set = resp
        .headers()
        .get(SET_COOKIE)
        .expect("a cookie")
        .to_str()
        .unwrap();
    set.split(';').next().unwrap().to_owned()
}

fn csrf_in(html: &str) -> String {
    let at = html.find("name=\"_csrf\" value=\"").expect("a CSRF field") + 20;
    html[at..].split('"').next().unwrap().to_owned()
}

async fn password_login_and_bearer_for_scripts(backend: Backend) {
    let app =
        TestApp::start_with(backend, |c| c.admin_password = Some("correct horse".into())).await;
    let http = no_redirects();
    let url = |p: &str| format!("{}{p}", app.base);

    let resp = http.get(url("/admin")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()[LOCATION], "/admin/login");
    let resp = http.get(url("/admin/api/tenants")).send().await.unwrap();
    expect_error(resp, StatusCode::UNAUTHORIZED, "admin_login_required").await;
    let resp = http
        .post(url("/admin/api/tenants"))
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    expect_error(resp, StatusCode::UNAUTHORIZED, "admin_login_required").await;

    // Scripts: the password as a bearer token.
    let resp = http
        .get(url("/admin/api/tenants"))
        .bearer_auth("correct horse")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = http
        .get(url("/admin/api/tenants"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // Browsers: the login form.
    let login = http.get(url("/admin/login")).send().await.unwrap();
    let cookie = cookie_of(&login);
    let csrf = csrf_in(&login.text().await.unwrap());
    let wrong = http
        .post(url("/admin/login"))
        .header(COOKIE, &cookie)
        .form(&[("_csrf", csrf.as_str()), ("password", "nope")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::OK);
    assert!(wrong.text().await.unwrap().contains("not right"));
    let right = http
        .post(url("/admin/login"))
        .header(COOKIE, &cookie)
        .form(&[("_csrf", csrf.as_str()), ("password", "correct horse")])
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), StatusCode::SEE_OTHER);
    let set = right.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let session = cookie_of(&right);
    assert_ne!(session, cookie, "a new session id on login");
    let resp = http
        .get(url("/admin"))
        .header(COOKIE, &session)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // A forged cookie is not a session.
    let forged = format!("{}x", session);
    let resp = http
        .get(url("/admin"))
        .header(COOKIE, &forged)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);

    // Without a password the panel opens directly.
    let open = TestApp::start(backend).await;
    assert_eq!(
        no_redirects()
            .get(format!("{}/admin", open.base))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

async fn forms_need_the_csrf_token(backend: Backend) {
    let app = TestApp::start(backend).await;
    let http = no_redirects();
    let page = http
        .get(format!("{}/admin/tenants", app.base))
        .send()
        .await
        .unwrap();
    let cookie = cookie_of(&page);
    let csrf = csrf_in(&page.text().await.unwrap());
    let before = tenant_count(&app).await;
    let post = |fields: Vec<(&'static str, String)>,
                extra: Option<(&'static str, &'static str)>,
                cookie: Option<&str>| {
        let mut req = http
            .post(format!("{}/admin/tenants", app.base))
            .form(&fields);
        if let Some(c) = cookie {
            req = req.header(COOKIE, c);
        }
        if let Some((h, v)) = extra {
            req = req.header(h, v);
        }
        req.send()
    };
    let name = || ("name", "Initech".to_owned());
    for (fields, extra, with_cookie) in [
        (vec![name()], None, true),
        (vec![name(), ("_csrf", "forged".into())], None, true),
        (vec![name(), ("_csrf", csrf.clone())], None, false),
        (
            vec![name(), ("_csrf", csrf.clone())],
            Some(("sec-fetch-site", "cross-site")),
            true,
        ),
    ] {
        let resp = post(fields, extra, with_cookie.then_some(cookie.as_str()))
            .await
            .unwrap();
        expect_error(resp, StatusCode::FORBIDDEN, "csrf_rejected").await;
    }
    assert_eq!(tenant_count(&app).await, before);
    let ok = post(vec![name(), ("_csrf", csrf.clone())], None, Some(&cookie))
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let html = ok.text().await.unwrap();
    assert!(html.contains("shown only now") && html.contains("cvg_"));
    assert_eq!(tenant_count(&app).await, before + 1);
}

async fn admin_api_onboards_a_tenant(backend: Backend) {
    let app = TestApp::start(backend).await;
    let created = expect_data(
        app.anon(Method::POST, "/admin/api/tenants")
            .json(&json!({"name": "Umbrella"}))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    let key = created["api_key"].as_str().unwrap().to_owned();
    let tenant_id = created["tenant"]["id"].as_str().unwrap().to_owned();
    // The new key works on the REST API at once.
    assert_eq!(
        app.with_key(&key, Method::GET, "/api/v1/channels")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );

    let resp = app
        .anon(Method::POST, "/admin/api/channels")
        .json(&json!({"tenant_id": tenant_id, "name": "WA", "type": "whatsapp_meta", "config": {"access_token": "t"}}))
        .send()
        .await
        .unwrap();
    let err = expect_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert_eq!(
        err["details"]["fields"][0]["field"],
        "config.phone_number_id"
    );
    let channel = expect_data(
        app.anon(Method::POST, "/admin/api/channels")
            .json(&json!({"tenant_id": tenant_id, "name": "Bot", "type": "webhook", "config": {"url": "https://bot.example.com"}}))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    assert!(channel["secret"].as_str().unwrap().starts_with("whsec_"));
    let listed: Value = expect_data(
        app.anon(
            Method::GET,
            &format!("/admin/api/channels?tenant_id={tenant_id}"),
        )
        .send()
        .await
        .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(listed.as_array().unwrap().len(), 1);

    // Routes, conversations and deliveries of the tenant through the admin API.
    let ws = expect_data(
        app.anon(Method::POST, "/admin/api/channels")
            .json(&json!({"tenant_id": tenant_id, "name": "Web", "type": "websocket"}))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    let route = expect_data(
        app.anon(Method::POST, "/admin/api/routes")
            .json(&json!({"tenant_id": tenant_id, "source_channel_id": ws["id"], "target_channel_id": channel["id"], "direction": "inbound"}))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    let cycle = app
        .anon(Method::POST, "/admin/api/routes")
        .json(&json!({"tenant_id": tenant_id, "source_channel_id": channel["id"], "target_channel_id": ws["id"]}))
        .send()
        .await
        .unwrap();
    expect_error(cycle, StatusCode::CONFLICT, "route_cycle").await;
    let routes = expect_data(
        app.anon(
            Method::GET,
            &format!("/admin/api/routes?tenant_id={tenant_id}"),
        )
        .send()
        .await
        .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(routes[0]["id"], route["id"]);
    let convs = expect_data(
        app.anon(
            Method::GET,
            &format!("/admin/api/conversations?tenant_id={tenant_id}&status=active"),
        )
        .send()
        .await
        .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(convs, json!([]));
    let failed = expect_data(
        app.anon(
            Method::GET,
            &format!("/admin/api/deliveries?tenant_id={tenant_id}&status=failed"),
        )
        .send()
        .await
        .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(failed, json!([]));
    let bad = app
        .anon(
            Method::GET,
            &format!("/admin/api/deliveries?tenant_id={tenant_id}&status=lost"),
        )
        .send()
        .await
        .unwrap();
    expect_error(bad, StatusCode::BAD_REQUEST, "invalid_query").await;
    let resp = app
        .anon(
            Method::DELETE,
            &format!(
                "/admin/api/routes/{}?tenant_id={tenant_id}",
                route["id"].as_str().unwrap()
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let off = expect_data(
        app.anon(
            Method::POST,
            &format!("/admin/api/channels/{}/status", ws["id"].as_str().unwrap()),
        )
        .json(&json!({"status": "inactive"}))
        .send()
        .await
        .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(off["status"], "inactive");

    let disabled = expect_data(
        app.anon(
            Method::POST,
            &format!("/admin/api/tenants/{tenant_id}/status"),
        )
        .json(&json!({"status": "inactive"}))
        .send()
        .await
        .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(disabled["status"], "inactive");
    expect_error(
        app.with_key(&key, Method::GET, "/api/v1/channels")
            .send()
            .await
            .unwrap(),
        StatusCode::FORBIDDEN,
        "tenant_inactive",
    )
    .await;
    let rotated = expect_data(
        app.anon(
            Method::POST,
            &format!("/admin/api/tenants/{tenant_id}/rotate_key"),
        )
        .send()
        .await
        .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_ne!(rotated["api_key"].as_str().unwrap(), key);
    let stats = expect_data(
        app.anon(Method::GET, "/admin/api/stats")
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(stats["failed"], 0);
    let missing = converger::domain::TenantId::new();
    let resp = app
        .anon(
            Method::POST,
            &format!("/admin/api/tenants/{missing}/rotate_key"),
        )
        .send()
        .await
        .unwrap();
    expect_error(resp, StatusCode::NOT_FOUND, "not_found").await;
}

async fn tenant_names_are_unique_without_case_in_cli_api_and_form(backend: Backend) {
    // The harness's tenant is called `acme`.
    let app = TestApp::start(backend).await;
    let before = crate::cli::listed_names(&app.database_url);
    assert_eq!(before, ["acme"]);

    let out = crate::cli::converger(&app.database_url, &["tenant", "create", " ACME "]);
    assert!(!out.status.success(), "the CLI refuses a taken name");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("a tenant called `ACME` exists already (names are compared without case)"),
        "{stderr}"
    );

    let resp = app
        .anon(Method::POST, "/admin/api/tenants")
        .json(&json!({ "name": "Acme" }))
        .send()
        .await
        .unwrap();
    let err = expect_error(resp, StatusCode::CONFLICT, "tenant_exists").await;
    assert!(err["message"].as_str().unwrap().contains("`Acme`"), "{err}");

    let http = no_redirects();
    let page = http
        .get(format!("{}/admin/tenants", app.base))
        .send()
        .await
        .unwrap();
    let cookie = cookie_of(&page);
    let csrf = csrf_in(&page.text().await.unwrap());
    let html = http
        .post(format!("{}/admin/tenants", app.base))
        .header(COOKIE, &cookie)
        .form(&[("_csrf", csrf.as_str()), ("name", "aCmE")])
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        html.contains("A tenant called aCmE exists already"),
        "the form says why"
    );
    assert!(
        !html.contains("shown only now"),
        "no key for a refused name"
    );

    assert_eq!(
        crate::cli::listed_names(&app.database_url),
        before,
        "nothing was created"
    );
    // Another name is fine, and a name finds its tenant whatever its case.
    crate::cli::stdout(&crate::cli::converger(
        &app.database_url,
        &["tenant", "create", "acme corp"],
    ));
    let disabled = crate::cli::stdout(&crate::cli::converger(
        &app.database_url,
        &["tenant", "disable", "ACME"],
    ));
    assert!(
        disabled.contains("inactive") && disabled.trim_end().ends_with("  acme"),
        "{disabled}"
    );
}

async fn tenant_name_rule_is_the_same_for_cli_api_and_form(backend: Backend) {
    let app = TestApp::start(backend).await;
    let http = no_redirects();
    let page = http
        .get(format!("{}/admin/tenants", app.base))
        .send()
        .await
        .unwrap();
    let cookie = cookie_of(&page);
    let csrf = csrf_in(&page.text().await.unwrap());
    let form = |name: String| {
        http.post(format!("{}/admin/tenants", app.base))
            .header(COOKIE, &cookie)
            .form(&[("_csrf", csrf.clone()), ("name", name)])
            .send()
    };
    let api = |name: String| {
        app.anon(Method::POST, "/admin/api/tenants")
            .json(&json!({ "name": name }))
            .send()
    };
    let cli = |name: String| crate::cli::converger(&app.database_url, &["tenant", "create", &name]);
    let before = tenant_count(&app).await;

    // 201 characters, or nothing but spaces: refused by each, with the same rule.
    for bad in ["x".repeat(201), "   ".to_owned()] {
        let out = cli(bad.clone());
        assert!(!out.status.success(), "the CLI refuses {bad:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("name: must be 1 to 200 characters"),
            "{stderr}"
        );

        let err = expect_error(
            api(bad.clone()).await.unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
        assert_eq!(
            err["details"]["fields"],
            json!([{"field": "name", "message": "must be 1 to 200 characters"}])
        );

        let resp = form(bad.clone()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let html = resp.text().await.unwrap();
        assert!(
            html.contains("The name must be 1 to 200 characters."),
            "the form shows the rule"
        );
        assert!(
            !html.contains("shown only now"),
            "no key for a refused name"
        );
    }
    assert_eq!(tenant_count(&app).await, before, "nothing was created");

    // 200 characters, with spaces around: accepted by each, trimmed.
    let longest = |c: &str| c.repeat(200);
    let out = cli(format!("  {}  ", longest("c")));
    let created = crate::cli::stdout(&out);
    assert!(
        created.contains(&format!("name    {}\n", longest("c"))),
        "{created}"
    );
    let created = expect_data(
        api(format!(" {} ", longest("a"))).await.unwrap(),
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(created["tenant"]["name"], longest("a"));
    let resp = form(format!(" {} ", longest("f"))).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.text().await.unwrap().contains("shown only now"));
    let names: Vec<String> = app
        .store
        .list_tenants()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    for c in ["c", "a", "f"] {
        assert!(names.contains(&longest(c)), "{c} x 200 stored trimmed");
    }
    assert_eq!(tenant_count(&app).await, before + 3);
}

/// The text of the first `<textarea name="NAME">` of a page, unescaped.
fn textarea(html: &str, name: &str) -> String {
    let open = format!("<textarea name=\"{name}\"");
    let at = html.find(&open).expect("the textarea") + open.len();
    let start = at + html[at..].find('>').unwrap() + 1;
    let end = start + html[start..].find("</textarea>").unwrap();
    html[start..end]
        .replace("&#34;", "\"")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// A session on the admin panel: its cookie and CSRF token, from `page`.
async fn admin_session(http: &reqwest::Client, base: &str, page: &str) -> (String, String) {
    let resp = http.get(format!("{base}{page}")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let cookie = cookie_of(&resp);
    let csrf = csrf_in(&resp.text().await.unwrap());
    (cookie, csrf)
}

async fn the_panel_edits_a_channel_config_as_the_api_validates(backend: Backend) {
    let app = TestApp::start(backend).await;
    let http = no_redirects();
    let channel = app
        .create_channel(
            "whatsapp_meta",
            json!({"phone_number_id": "1001", "access_token": "EAAG-stored-token", "verify_token": "v-1"}),
        )
        .await;
    let id = channel["id"].as_str().unwrap().to_owned();
    let page_path = format!("/admin/channels/{id}");
    let (cookie, csrf) = admin_session(&http, &app.base, &page_path).await;
    let page = http
        .get(format!("{}{page_path}", app.base))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!page.contains("EAAG-stored-token"), "secrets stay masked");
    let shown: Value = serde_json::from_str(&textarea(&page, "config")).unwrap();
    assert_eq!(shown["access_token"], "********");
    assert_eq!(shown["phone_number_id"], "1001");

    let submit = |config: String, csrf: Option<&str>| {
        let mut fields = vec![("config", config)];
        if let Some(token) = csrf {
            fields.push(("_csrf", token.to_owned()));
        }
        http.post(format!("{}/admin/channels/{id}/config", app.base))
            .header(COOKIE, &cookie)
            .form(&fields)
            .send()
    };
    let stored = || async {
        app.store
            .get_channel(app.tenant_id, id.parse().unwrap())
            .await
            .unwrap()
            .config
    };

    // Edited as shown: the masked token is kept, the number replaced.
    let mut edited = shown.clone();
    edited["phone_number_id"] = json!("2002");
    let saved = submit(edited.to_string(), Some(&csrf)).await.unwrap();
    assert_eq!(saved.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        saved.headers()[LOCATION],
        format!("/admin/channels/{id}?notice=Config+saved.")
    );
    let config = stored().await;
    assert_eq!(config["phone_number_id"], "2002");
    assert_eq!(config["access_token"], "EAAG-stored-token");
    assert_eq!(config["verify_token"], "v-1");
    let via_api = expect_data(
        app.req(Method::GET, &format!("/api/v1/channels/{id}"))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(via_api["config"]["phone_number_id"], "2002");

    // Refused, with the adapter's rules, and nothing written; a secret typed in is not
    // written back into the page.
    let before = stored().await;
    let mut bad = shown.clone();
    bad["api_base_url"] = json!("not a url");
    bad["access_token"] = json!("EAAG-typed-token");
    let refused = submit(bad.to_string(), Some(&csrf)).await.unwrap();
    assert_eq!(refused.status(), StatusCode::OK);
    let html = refused.text().await.unwrap();
    assert!(
        html.contains("data-field=\"config.api_base_url\""),
        "the field's error is shown"
    );
    assert!(!html.contains("EAAG-typed-token") && !html.contains("EAAG-stored-token"));
    assert!(
        html.contains("type them again"),
        "the typed secret is asked for again"
    );
    assert_eq!(
        serde_json::from_str::<Value>(&textarea(&html, "config")).unwrap()["api_base_url"],
        "not a url",
        "what was entered is kept"
    );
    for (config, field, message) in [
        ("{".to_owned(), "config", "is not valid JSON"),
        ("[]".to_owned(), "config", "must be a JSON object"),
        (
            json!({"phone_number_id": "3", "access_token": "********", "verify_token": "********", "app_secret": "********"})
                .to_string(),
            "config.app_secret",
            "no value is stored",
        ),
        (
            json!({"phone_number_id": "3", "access_token": "********", "verify_token": "********", "surprise": 1})
                .to_string(),
            "config.surprise",
            "",
        ),
    ] {
        let resp = submit(config.clone(), Some(&csrf)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let html = resp.text().await.unwrap();
        assert!(
            html.contains(&format!("data-field=\"{field}\"")) && html.contains(message),
            "{config}: no error on {field}"
        );
    }
    assert_eq!(stored().await, before, "nothing refused was written");

    // Without the CSRF token nothing is done; an unknown channel is not found.
    let forged = submit(edited.to_string(), None).await.unwrap();
    expect_error(forged, StatusCode::FORBIDDEN, "csrf_rejected").await;
    let missing = uuid::Uuid::now_v7();
    let resp = http
        .post(format!("{}/admin/channels/{missing}/config", app.base))
        .header(COOKIE, &cookie)
        .form(&[("_csrf", csrf.as_str()), ("config", "{}")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

async fn the_panel_retries_now_replays_and_shows_attempts(backend: Backend) {
    use crate::common::eventually;
    use crate::common::sink::{Reply, Sink};
    use std::time::Duration;

    let app = TestApp::start(backend).await;
    let http = no_redirects();
    let sink = Sink::start().await;
    // The first attempt is asked to wait an hour.
    sink.script([Reply::status(503)
        .header("retry-after", "3600")
        .body("down for maintenance")]);
    let channel = app
        .create_channel("webhook", json!({"url": format!("{}/hook", sink.url)}))
        .await;
    let channel_id = channel["id"].as_str().unwrap().to_owned();
    let conv = app.create_conversation(&channel_id, None).await;
    let conv_id = conv["id"].as_str().unwrap().to_owned();
    let post = |text: &'static str| {
        let (app, conv_id) = (&app, &conv_id);
        async move {
            let activity = expect_data(
                app.post_activity(conv_id, json!({ "text": text })).await,
                StatusCode::CREATED,
            )
            .await;
            let list = expect_data(
                app.req(
                    Method::GET,
                    &format!(
                        "/api/v1/activities/{}/deliveries",
                        activity["id"].as_str().unwrap()
                    ),
                )
                .send()
                .await
                .unwrap(),
                StatusCode::OK,
            )
            .await;
            list[0]["id"].as_str().unwrap().to_owned()
        }
    };
    let status_of = |id: String| {
        let app = &app;
        async move {
            let list = expect_data(
                app.req(Method::GET, "/api/v1/deliveries?limit=500")
                    .send()
                    .await
                    .unwrap(),
                StatusCode::OK,
            )
            .await;
            list.as_array()
                .unwrap()
                .iter()
                .find(|d| d["id"] == id.as_str())
                .cloned()
                .unwrap()
        }
    };
    let waiting = post("wait for it").await;
    eventually(Duration::from_secs(20), "the first attempt", || async {
        (status_of(waiting.clone()).await["attempts"] == 1).then_some(())
    })
    .await;

    let page_path = format!("/admin/conversations/{conv_id}");
    let (cookie, csrf) = admin_session(&http, &app.base, &page_path).await;
    let page = http
        .get(format!("{}{page_path}", app.base))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("Retry now"),
        "a waiting delivery can be retried now"
    );
    assert!(page.contains("<details class=\"attempts\">"));
    assert!(page.contains("data-attempt=\"1\"") && page.contains("down for maintenance"));

    let retried = http
        .post(format!("{}/admin/deliveries/{waiting}/retry", app.base))
        .header(COOKIE, &cookie)
        .form(&[
            ("_csrf", csrf.as_str()),
            ("tenant", &app.tenant_id.to_string()),
            ("back", &page_path),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(retried.status(), StatusCode::SEE_OTHER);
    assert!(
        retried.headers()[LOCATION]
            .to_str()
            .unwrap()
            .contains("Delivery+queued+again.")
    );
    eventually(
        Duration::from_secs(20),
        "the delivery after retry now",
        || async { (status_of(waiting.clone()).await["status"] == "delivered").then_some(()) },
    )
    .await;

    // A failure for good, replayed from the channel page once the receiver is fixed.
    sink.always(Reply::status(400));
    let failing = post("refused").await;
    eventually(Duration::from_secs(20), "the failure", || async {
        (status_of(failing.clone()).await["status"] == "failed").then_some(())
    })
    .await;
    sink.always(Reply::status(200));
    let replay = |since: &'static str| {
        http.post(format!("{}/admin/channels/{channel_id}/replay", app.base))
            .header(COOKIE, &cookie)
            .form(&[("_csrf", csrf.as_str()), ("since", since), ("until", "")])
            .send()
    };
    let refused = replay("last week").await.unwrap();
    assert_eq!(refused.status(), StatusCode::SEE_OTHER);
    assert!(
        refused.headers()[LOCATION]
            .to_str()
            .unwrap()
            .contains("Replay+refused")
    );
    assert_eq!(status_of(failing.clone()).await["status"], "failed");
    let replayed = replay("2000-01-01T00:00").await.unwrap();
    assert_eq!(replayed.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        replayed.headers()[LOCATION],
        format!("/admin/channels/{channel_id}?notice=1+failed+deliveries+queued+again.")
    );
    eventually(Duration::from_secs(20), "the replayed delivery", || async {
        (status_of(failing.clone()).await["status"] == "delivered").then_some(())
    })
    .await;
    let page = http
        .get(format!("{}{page_path}", app.base))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!page.contains("Retry now"), "nothing waits any more");
}

/// The conversation page offers close while the conversation is active and reopen
/// once it is closed; both are recorded as its activities.
async fn the_panel_closes_and_reopens_a_conversation(backend: Backend) {
    let app = TestApp::start(backend).await;
    let http = no_redirects();
    let ch = app.websocket_channel().await;
    let conv = app
        .create_conversation(ch["id"].as_str().unwrap(), Some("user-7"))
        .await;
    let conv_id = conv["id"].as_str().unwrap().to_owned();
    let page_path = format!("/admin/conversations/{conv_id}");
    let (cookie, csrf) = admin_session(&http, &app.base, &page_path).await;
    let page = || async {
        http.get(format!("{}{page_path}", app.base))
            .header(COOKIE, &cookie)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let act = |action: &'static str| {
        let (http, cookie, csrf) = (http.clone(), cookie.clone(), csrf.clone());
        let url = format!("{}{page_path}/{action}", app.base);
        async move {
            let resp = http
                .post(url)
                .header(COOKIE, &cookie)
                .form(&[("_csrf", csrf.as_str())])
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::SEE_OTHER);
            resp.headers()[LOCATION].to_str().unwrap().to_owned()
        }
    };
    let active = page().await;
    assert!(active.contains(&format!("action=\"{page_path}/close\"")));
    assert!(!active.contains(&format!("action=\"{page_path}/reopen\"")));

    assert!(act("close").await.contains("Conversation+closed"));
    let closed = page().await;
    assert!(closed.contains(&format!("action=\"{page_path}/reopen\"")));
    assert!(!closed.contains(&format!("action=\"{page_path}/close\"")));
    assert!(closed.contains("conversationUpdate"));

    assert!(act("reopen").await.contains("Conversation+reopened"));
    assert!(
        page()
            .await
            .contains(&format!("action=\"{page_path}/close\""))
    );
    let acts = app.activities(&conv_id).await;
    let reasons: Vec<_> = acts
        .iter()
        .map(|a| {
            (
                a["sender"].as_str().unwrap(),
                a["metadata"]["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(reasons, [("admin", "closed"), ("admin", "active")]);
    assert!(acts.iter().all(|a| a["metadata"]["reason"] == "admin"));

    // Reopening what the party has replaced is refused with a notice, changing nothing.
    act("close").await;
    let newer = app
        .create_conversation(ch["id"].as_str().unwrap(), Some("user-7"))
        .await;
    let refused = act("reopen").await;
    assert!(refused.contains("Not+reopened"), "{refused}");
    assert!(refused.contains(newer["id"].as_str().unwrap()), "{refused}");
    assert_eq!(app.activities(&conv_id).await.len(), 3);

    // The JSON API does the same for scripts.
    let resp = app
        .anon(
            Method::POST,
            &format!("/admin/api/conversations/{conv_id}/reopen"),
        )
        .send()
        .await
        .unwrap();
    let err = expect_error(resp, StatusCode::CONFLICT, "conversation_exists").await;
    assert_eq!(err["details"]["conversation_id"], newer["id"]);
    let resp = app
        .anon(
            Method::POST,
            &format!(
                "/admin/api/conversations/{}/reopen",
                newer["id"].as_str().unwrap()
            ),
        )
        .send()
        .await
        .unwrap();
    expect_error(resp, StatusCode::CONFLICT, "conversation_active").await;
}
