//! The `http` library: external data for Envoy-mode policies, as the
//! Kyverno Authz Server offers it (the requests themselves are
//! [`crate::outbound::http`]'s).
//!
//! ```cel
//! http.Get("https://data.example/users/" + id)            // dyn
//! http.Get(url, {"authorization": "Bearer " + token})
//! http.Post(url, {"user": id}, {"x-api-key": key})        // the body is sent as JSON
//! http.Client(caBundlePem).Get(url)                       // trusts only that bundle
//! ```
//!
//! A call answers the response's JSON object with `statusCode` (an `int`)
//! added, or `{"body": <value>, "statusCode": <int>}` when the body is not
//! an object. JSON numbers are `double`s. The lower-case spellings
//! (`http.get`, `.post`, `.client`) are the same functions.
//!
//! Calls go through the context's [`Host`](crate::cel::eval::Host). On a
//! thread that must not block ([`Ctx::may_block`] false) a `GET` is
//! answered from the cache only and otherwise gives up, as does every
//! `POST`: the evaluation is made again where it may block.

use crate::cel::eval::{Ctx, Error, Function, Object, Value};
use crate::outbound::http::{Call, Client, Method};
use std::any::Any;
use std::sync::Arc;

/// The value of `http.Client(caBundle)`: a client with its own roots.
#[derive(Debug, Clone)]
pub struct HttpClient(Option<Arc<Client>>);

impl Object for HttpClient {
    fn type_name(&self) -> &str {
        "http.Context"
    }
    fn equals(&self, other: &dyn Object) -> bool {
        other
            .as_any()
            .downcast_ref::<HttpClient>()
            .is_some_and(|o| match (&o.0, &self.0) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            })
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

pub const FUNCTIONS: &[Function] = &[
    // All read the network or the process's cache of answers.
    Function::global("http.Get", 1, get).impure(),
    Function::global("http.Get", 2, get).impure(),
    Function::global("http.get", 1, get).impure(),
    Function::global("http.get", 2, get).impure(),
    Function::global("http.Post", 2, post).impure(),
    Function::global("http.Post", 3, post).impure(),
    Function::global("http.post", 2, post).impure(),
    Function::global("http.post", 3, post).impure(),
    Function::global("http.Client", 1, client),
    Function::global("http.client", 1, client),
    Function::method("Get", 1, get_with).impure(),
    Function::method("Get", 2, get_with).impure(),
    Function::method("get", 1, get_with).impure(),
    Function::method("get", 2, get_with).impure(),
    Function::method("Post", 2, post_with).impure(),
    Function::method("Post", 3, post_with).impure(),
    Function::method("post", 2, post_with).impure(),
    Function::method("post", 3, post_with).impure(),
    Function::method("Client", 1, client_with),
    Function::method("client", 1, client_with),
];

const GET: &str = "http.Get";
const POST: &str = "http.Post";
const CLIENT: &str = "http.Client";

/// The client of a method call's receiver and the other arguments; `None`
/// when the receiver is not a client.
fn receiver<'a, 'r>(args: &'a [Value<'r>]) -> Option<(&'a HttpClient, &'a [Value<'r>])> {
    let (first, rest) = args.split_first()?;
    Some((first.downcast::<HttpClient>()?, rest))
}

fn get<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    request(ctx, GET, Method::Get, None, args)
}

fn post<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    request(ctx, POST, Method::Post, None, args)
}

fn get_with<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    match receiver(args) {
        Some((c, rest)) => request(ctx, GET, Method::Get, c.0.as_deref(), rest),
        None => Err(Error::no_overload("Get", args)),
    }
}

fn post_with<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    match receiver(args) {
        Some((c, rest)) => request(ctx, POST, Method::Post, c.0.as_deref(), rest),
        None => Err(Error::no_overload("Post", args)),
    }
}

fn client<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let [Value::String(pem)] = args else {
        return Err(Error::no_overload(CLIENT, args));
    };
    new_client(ctx, pem)
}

fn client_with<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    match receiver(args) {
        Some((_, [Value::String(pem)])) => new_client(ctx, pem),
        _ => Err(Error::no_overload("Client", args)),
    }
}

/// `http.Client(pem)`: an empty bundle is the default client.
fn new_client<'r>(ctx: &mut Ctx<'r>, pem: &str) -> Result<Value<'r>, Error> {
    if pem.is_empty() {
        return Ok(Value::object(HttpClient(None)));
    }
    ctx.charge_bytes(pem.len())?;
    crate::outbound::http::client(pem)
        .map(|c| Value::object(HttpClient(Some(c))))
        .map_err(|e| Error::function(CLIENT, e.to_string()))
}

/// The headers argument: a `map(string, string)` (a policy's or the
/// request's).
fn headers(name: &'static str, v: &Value<'_>) -> Result<Vec<(String, String)>, Error> {
    let Value::Map(m) = v else {
        return Err(Error::function(
            name,
            "the headers are not a map(string, string)",
        ));
    };
    m.entries()
        .into_iter()
        .map(|(k, v)| match (k, v) {
            (Value::String(k), Value::String(v)) => {
                Ok((k.as_str().to_owned(), v.as_str().to_owned()))
            }
            _ => Err(Error::function(
                name,
                "the headers are not a map(string, string)",
            )),
        })
        .collect()
}

fn request<'r>(
    ctx: &mut Ctx<'r>,
    name: &'static str,
    method: Method,
    client: Option<&Client>,
    args: &[Value<'r>],
) -> Result<Value<'r>, Error> {
    let (url, body, hdrs) = match (method, args) {
        (Method::Get, [Value::String(u)]) => (u, None, None),
        (Method::Get, [Value::String(u), h]) => (u, None, Some(h)),
        (Method::Post, [Value::String(u), b]) => (u, Some(b), None),
        (Method::Post, [Value::String(u), b, h]) => (u, Some(b), Some(h)),
        _ => return Err(Error::no_overload(name, args)),
    };
    let owned = match hdrs {
        Some(h) => headers(name, h)?,
        None => Vec::new(),
    };
    let headers: Vec<(&str, &str)> = owned
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let body = match body {
        None => None,
        Some(b) => {
            let json = crate::cel::eval::value::to_json(b)
                .ok_or_else(|| Error::function(name, "the body cannot be sent as JSON"))?;
            let text = serde_json::to_vec(&json).map_err(|e| {
                Error::function(name, format!("the body cannot be sent as JSON: {e}"))
            })?;
            ctx.charge_bytes(text.len())?;
            Some(text)
        }
    };
    let sent: usize = url.len()
        + headers
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>();
    ctx.charge_bytes(sent)?;
    let call = Call {
        method,
        url,
        headers,
        body,
        client,
        deadline: ctx.meter.deadline(),
    };
    let response = if ctx.may_block() {
        ctx.host()
            .http(&call)
            .map_err(|e| Error::function(name, e))?
    } else {
        match ctx.host().http_cached(&call) {
            Some(r) => r,
            None => return Err(ctx.meter.give_up()),
        }
    };
    // What the policy reads is as large as the body.
    ctx.charge_bytes(response.bytes)?;
    Ok(response.value.clone())
}

/// The library's overloads, for the type checker.
pub const DECLS: &str = "
http.Get(string) -> dyn
http.Get(string, map(string, string)) -> dyn
http.get(string) -> dyn
http.get(string, map(string, string)) -> dyn
http.Post(string, dyn) -> dyn
http.Post(string, dyn, map(string, string)) -> dyn
http.post(string, dyn) -> dyn
http.post(string, dyn, map(string, string)) -> dyn
http.Client(string) -> http.Context
http.client(string) -> http.Context
(http.Context).Get(string) -> dyn
(http.Context).Get(string, map(string, string)) -> dyn
(http.Context).get(string) -> dyn
(http.Context).get(string, map(string, string)) -> dyn
(http.Context).Post(string, dyn) -> dyn
(http.Context).Post(string, dyn, map(string, string)) -> dyn
(http.Context).post(string, dyn) -> dyn
(http.Context).post(string, dyn, map(string, string)) -> dyn
(http.Context).Client(string) -> http.Context
(http.Context).client(string) -> http.Context
";

/// A client has no fields.
pub const OBJECTS: &[crate::cel::check::decls::ObjectDecl] = &[("http.Context", &[])];

/// The functions whose first argument (after a client receiver) is the URL
/// requested: a literal one is checked when the policy loads.
pub fn takes_url(name: &str, method: bool) -> bool {
    if method {
        matches!(name, "Get" | "get" | "Post" | "post")
    } else {
        matches!(name, "http.Get" | "http.get" | "http.Post" | "http.post")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cel::eval::{lib, Host, HttpCall, HttpResponse, Meter};
    use std::sync::Mutex;

    /// Answers every call with what it was asked, and records the calls.
    #[derive(Default)]
    struct Echo {
        seen: Mutex<Vec<String>>,
        cached: bool,
    }

    impl Host for Echo {
        fn jwks(&self, _: &str) -> Result<Arc<crate::identity::jwks::KeySet>, String> {
            Err("no".into())
        }
        fn http(&self, call: &HttpCall<'_>) -> Result<Arc<HttpResponse>, String> {
            let body = call
                .body
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned());
            let line = format!(
                "{:?} {} {:?} {:?}",
                call.method, call.url, call.headers, body
            );
            self.seen.lock().unwrap().push(line.clone());
            if call.url.contains("fail") {
                return Err("refused".into());
            }
            Ok(Arc::new(HttpResponse {
                value: Value::string(line),
                bytes: 5_000,
            }))
        }
        fn http_cached(&self, call: &HttpCall<'_>) -> Option<Arc<HttpResponse>> {
            self.cached.then(|| self.http(call).ok()).flatten()
        }
    }

    fn call<'r>(
        ctx: &mut Ctx<'r>,
        name: &str,
        method: bool,
        args: &[Value<'r>],
    ) -> Result<Value<'r>, Error> {
        lib::call(ctx, name, method, args)
    }

    fn text(v: &Value<'_>) -> String {
        match v {
            Value::String(s) => s.as_str().to_owned(),
            _ => panic!("not a string"),
        }
    }

    fn headers() -> Value<'static> {
        use crate::cel::eval::value::OwnedMap;
        let mut m = OwnedMap::default();
        m.insert(
            crate::cel::eval::Key::String(crate::cel::eval::Str::Owned(Arc::from("x-k"))),
            Value::str("v"),
        );
        Value::map(m)
    }

    #[test]
    fn calls_reach_the_host_with_their_arguments() {
        let host = Echo::default();
        let mut c = Ctx::new(None, Meter::new(1_000_000)).with_host(&host);
        let v = call(&mut c, "http.Get", false, &[Value::str("https://a.test/x")]).unwrap();
        assert_eq!(text(&v), "Get https://a.test/x [] None");
        let v = call(
            &mut c,
            "http.post",
            false,
            &[Value::str("https://a.test/p"), Value::Int(7), headers()],
        )
        .unwrap();
        assert_eq!(
            text(&v),
            "Post https://a.test/p [(\"x-k\", \"v\")] Some(\"7\")"
        );
        let client = call(&mut c, "http.Client", false, &[Value::str("")]).unwrap();
        assert_eq!(client.type_name(), "http.Context");
        let v = call(
            &mut c,
            "Get",
            true,
            &[client.clone(), Value::str("https://a.test/y"), headers()],
        )
        .unwrap();
        assert_eq!(text(&v), "Get https://a.test/y [(\"x-k\", \"v\")] None");
        let e = call(
            &mut c,
            "http.Get",
            false,
            &[Value::str("https://fail.test/")],
        )
        .unwrap_err();
        assert_eq!(e.function.as_deref(), Some("http.Get"));
        assert_eq!(e.message, "refused");
        // Wrong argument types are for other overloads.
        let e = call(&mut c, "http.Get", false, &[Value::Int(1)]).unwrap_err();
        assert_eq!(e.kind, crate::cel::ErrorKind::NoSuchOverload);
        let e = call(&mut c, "Get", true, &[Value::str("x"), Value::str("y")]).unwrap_err();
        assert_eq!(e.kind, crate::cel::ErrorKind::NoSuchOverload);
        // Headers must be strings.
        let mut m = crate::cel::eval::value::OwnedMap::default();
        m.insert(
            crate::cel::eval::Key::String(crate::cel::eval::Str::Owned(Arc::from("n"))),
            Value::Int(1),
        );
        let e = call(
            &mut c,
            "http.Get",
            false,
            &[Value::str("https://a.test/"), Value::map(m)],
        )
        .unwrap_err();
        assert!(e.message.contains("map(string, string)"), "{}", e.message);
        assert!(lib::lookup("http.Get", false, 1).iter().all(|f| !f.pure));
    }

    #[test]
    fn a_bad_ca_bundle_is_an_error() {
        let mut c = Ctx::new(None, Meter::new(1_000_000));
        let e = call(&mut c, "http.Client", false, &[Value::str("not pem")]).unwrap_err();
        assert_eq!(e.function.as_deref(), Some("http.Client"));
        assert!(e.message.contains("CA bundle"), "{}", e.message);
    }

    #[test]
    fn the_default_host_refuses_what_is_not_allowed() {
        let mut c = Ctx::new(None, Meter::new(1_000_000));
        let e = call(
            &mut c,
            "http.Get",
            false,
            &[Value::str("https://a.test/x?k=SECRET")],
        )
        .unwrap_err();
        assert_eq!(
            e.message,
            "https://a.test is not allowed (--http-allowed-urls)"
        );
    }

    #[test]
    fn a_context_that_must_not_block_gives_up_unless_cached() {
        let host = Echo::default();
        let mut c = Ctx::new(None, Meter::new(1_000_000))
            .with_host(&host)
            .without_blocking();
        let e = call(&mut c, "http.Get", false, &[Value::str("https://a.test/x")]).unwrap_err();
        assert_eq!(e.kind, crate::cel::ErrorKind::CostExceeded);
        assert!(c.meter.yielded());
        assert!(host.seen.lock().unwrap().is_empty());
        let host = Echo {
            cached: true,
            ..Echo::default()
        };
        let mut c = Ctx::new(None, Meter::new(1_000_000))
            .with_host(&host)
            .without_blocking();
        call(&mut c, "http.Get", false, &[Value::str("https://a.test/x")]).unwrap();
        assert!(!c.meter.yielded());
    }

    #[test]
    fn the_answer_is_charged_by_its_size() {
        let host = Echo::default();
        // 5 000 bytes of answer cost some 500 units: over a budget of 100.
        let mut c = Ctx::new(None, Meter::new(100)).with_host(&host);
        let e = call(&mut c, "http.Get", false, &[Value::str("https://a.test/x")]).unwrap_err();
        assert_eq!(e.kind, crate::cel::ErrorKind::CostExceeded);
        // A big body is refused before it is sent.
        let mut c = Ctx::new(None, Meter::new(100)).with_host(&host);
        let big = Value::string("x".repeat(10_000));
        let e = call(
            &mut c,
            "http.Post",
            false,
            &[Value::str("https://a.test/p"), big],
        )
        .unwrap_err();
        assert_eq!(e.kind, crate::cel::ErrorKind::CostExceeded);
        assert_eq!(host.seen.lock().unwrap().len(), 1);
    }
}
