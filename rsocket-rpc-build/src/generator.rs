//! The prost-build service generator: one `xxx_server` and one
//! `xxx_client` module per service, built with `quote!`. prost-build
//! formats the whole file with prettyplease afterwards, so doc attributes
//! come out as `///` comments.

use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;

use heck::{ToSnakeCase, ToUpperCamelCase};
use proc_macro2::{Ident, Span, TokenStream};
use prost_build::{Comments, Method, Service, ServiceGenerator};
use quote::{format_ident, quote};

use crate::Error;

/// What the generator needs from the builder, and what it reports back.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub(crate) fire_and_forget: HashSet<String>,
    /// Routes marked idempotent.
    pub(crate) idempotent: HashSet<String>,
    /// The idempotent routes that named a method of an allowed kind.
    pub(crate) used_idempotent: HashSet<String>,
    /// Fire-and-forget routes that matched a method.
    pub(crate) used: HashSet<String>,
    pub(crate) errors: Vec<Error>,
}

pub(crate) struct RpcGenerator {
    pub(crate) build_client: bool,
    pub(crate) build_server: bool,
    pub(crate) shared: Rc<RefCell<Shared>>,
}

/// The shape of a method, as the runtime's `MethodKind` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Unary,
    ServerStreaming,
    ClientStreaming,
    BidiStreaming,
    FireAndForget,
}

impl Kind {
    fn variant(self) -> Ident {
        format_ident!(
            "{}",
            match self {
                Self::Unary => "Unary",
                Self::ServerStreaming => "ServerStreaming",
                Self::ClientStreaming => "ClientStreaming",
                Self::BidiStreaming => "BidiStreaming",
                Self::FireAndForget => "FireAndForget",
            }
        )
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Unary => "Unary call (REQUEST_RESPONSE)",
            Self::ServerStreaming => "Server-streaming call (REQUEST_STREAM)",
            Self::ClientStreaming => {
                "Client-streaming call (REQUEST_CHANNEL answered with one message)"
            }
            Self::BidiStreaming => "Bidirectional streaming call (REQUEST_CHANNEL)",
            Self::FireAndForget => "Fire-and-forget call (REQUEST_FNF): nothing comes back",
        }
    }

    fn streams_out(self) -> bool {
        matches!(self, Self::ServerStreaming | Self::BidiStreaming)
    }

    fn streams_in(self) -> bool {
        matches!(self, Self::ClientStreaming | Self::BidiStreaming)
    }
}

/// A method with everything the templates need.
struct MethodModel {
    proto_name: String,
    route: String,
    kind: Kind,
    /// Called with `CallHints::IDEMPOTENT`.
    idempotent: bool,
    ident: Ident,
    /// The client's method: `ident`, with a `_` added when that would be
    /// one of the client's own methods ([`CLIENT_OWN_METHODS`]).
    client_ident: Ident,
    stream_type: Ident,
    input: TokenStream,
    output: TokenStream,
    docs: Vec<String>,
}

impl ServiceGenerator for RpcGenerator {
    fn generate(&mut self, service: Service, buf: &mut String) {
        match self.generate_service(&service) {
            Ok(code) => buf.push_str(&code.to_string()),
            Err(e) => self.shared.borrow_mut().errors.push(e),
        }
    }
}

impl RpcGenerator {
    fn generate_service(&mut self, service: &Service) -> Result<TokenStream, Error> {
        let full_name = if service.package.is_empty() {
            service.proto_name.clone()
        } else {
            format!("{}.{}", service.package, service.proto_name)
        };
        let methods = service
            .methods
            .iter()
            .map(|m| self.model(&full_name, m))
            .collect::<Result<Vec<_>, _>>()?;
        check_unique_names(&full_name, &methods)?;
        let mut out = TokenStream::new();
        if self.build_server {
            out.extend(server(service, &full_name, &methods));
        }
        if self.build_client {
            out.extend(client(service, &full_name, &methods));
        }
        Ok(out)
    }

    fn model(&mut self, service: &str, m: &Method) -> Result<MethodModel, Error> {
        let route = format!("{service}/{}", m.proto_name);
        let mut shared = self.shared.borrow_mut();
        let marked = shared.fire_and_forget.contains(&route);
        let kind = match (m.client_streaming, m.server_streaming) {
            (false, false) if marked => Kind::FireAndForget,
            (false, false) => Kind::Unary,
            (false, true) => Kind::ServerStreaming,
            (true, false) => Kind::ClientStreaming,
            (true, true) => Kind::BidiStreaming,
        };
        if marked {
            if kind != Kind::FireAndForget {
                return Err(Error::FireAndForgetNotUnary { route });
            }
            shared.used.insert(route.clone());
        }
        let idempotent = shared.idempotent.contains(&route);
        if idempotent {
            if !matches!(kind, Kind::Unary | Kind::ServerStreaming) {
                return Err(Error::IdempotentNotAllowed {
                    route,
                    kind: kind.describe(),
                });
            }
            shared.used_idempotent.insert(route.clone());
        }
        let bare = m.name.strip_prefix("r#").unwrap_or(&m.name);
        Ok(MethodModel {
            proto_name: m.proto_name.clone(),
            kind,
            idempotent,
            ident: ident(&m.name),
            client_ident: if CLIENT_OWN_METHODS.contains(&m.name.as_str()) {
                format_ident!("{}_", m.name)
            } else {
                ident(&m.name)
            },
            stream_type: format_ident!("{}Stream", bare.to_upper_camel_case()),
            input: type_path(&m.input_type, &route)?,
            output: type_path(&m.output_type, &route)?,
            docs: doc_lines(&m.comments),
            route,
        })
    }
}

/// The methods every generated client has besides the RPCs; an RPC whose
/// snake_case name is one of them gets a `_` added on the client.
const CLIENT_OWN_METHODS: &[&str] = &[
    "new",
    "from_client",
    "with_interceptor",
    "with_timeout",
    "max_decoding_message_size",
    "client",
];

/// Fails when two methods of a service would get the same Rust name (on
/// the server trait or on the client), which proto allows (`GetHTTPStatus`
/// and `GetHttpStatus` are both `get_http_status`).
fn check_unique_names(service: &str, methods: &[MethodModel]) -> Result<(), Error> {
    let sides: [fn(&MethodModel) -> &Ident; 2] = [|m| &m.ident, |m| &m.client_ident];
    for name_of in sides {
        for (i, m) in methods.iter().enumerate() {
            let name = name_of(m);
            if let Some(first) = methods[..i].iter().find(|f| name_of(f) == name) {
                return Err(Error::DuplicateMethodName {
                    service: service.to_owned(),
                    name: name.to_string().trim_start_matches("r#").to_owned(),
                    methods: [first.proto_name.clone(), m.proto_name.clone()],
                });
            }
        }
    }
    Ok(())
}

/// An identifier, raw (`r#type`) when prost made it one.
fn ident(name: &str) -> Ident {
    match name.strip_prefix("r#") {
        Some(raw) => Ident::new_raw(raw, Span::call_site()),
        None => Ident::new(name, Span::call_site()),
    }
}

/// A message type as seen from the generated `xxx_server`/`xxx_client`
/// module, one level below the package module prost resolved it against.
fn type_path(resolved: &str, route: &str) -> Result<TokenStream, Error> {
    // prost maps `google.protobuf.Empty` to `()`.
    let path = if resolved == "()" || resolved.starts_with("::") || resolved.starts_with("crate::")
    {
        resolved.to_owned()
    } else {
        format!("super::{resolved}")
    };
    path.parse().map_err(|_| Error::BadTypePath {
        route: route.to_owned(),
        path,
    })
}

/// Proto comments as doc lines, made safe for rustdoc: brackets and angle
/// brackets are escaped (so no broken links or HTML tags), URLs become
/// autolinks, indentation is dropped (so nothing turns into a doctest),
/// and fenced code blocks are kept verbatim but marked `text` unless they
/// name a language other than Rust (so none is compiled as a doctest).
fn doc_lines(comments: &Comments) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut push_block = |block: &[String]| {
        if !lines.is_empty() && !block.is_empty() {
            lines.push(String::new());
        }
        sanitize_block(block, &mut lines);
    };
    push_block(&comments.leading);
    push_block(&comments.trailing);
    while lines.last().is_some_and(String::is_empty) {
        lines.pop();
    }
    lines
}

/// One comment block's lines, sanitized, with its fenced code blocks kept
/// as they are (an unclosed one is closed at the end of the block, so it
/// does not swallow the generated docs that follow).
fn sanitize_block(block: &[String], out: &mut Vec<String>) {
    // The open fence: its marker (```` ``` ```` or `~~~`, maybe longer)
    // and the indentation of its opening line, removed from its lines.
    let mut fence: Option<(String, usize)> = None;
    // The lines of the paragraph being read: code spans may wrap.
    let mut paragraph: Vec<&str> = Vec::new();
    for line in block {
        let trimmed = line.trim();
        match &fence {
            None => match fence_open(trimmed) {
                Some((marker, info)) => {
                    out.extend(sanitize_paragraph(&paragraph));
                    paragraph.clear();
                    out.push(format!("{marker}{}", fence_info(info)));
                    let indent = line.len() - line.trim_start().len();
                    fence = Some((marker.to_owned(), indent));
                }
                None if trimmed.is_empty() => {
                    out.extend(sanitize_paragraph(&paragraph));
                    paragraph.clear();
                    out.push(String::new());
                }
                None => paragraph.push(trimmed),
            },
            Some((marker, indent)) => {
                if closes_fence(trimmed, marker) {
                    out.push(marker.clone());
                    fence = None;
                } else {
                    let cut = line
                        .char_indices()
                        .take_while(|&(i, c)| i < *indent && c.is_whitespace())
                        .map(|(i, c)| i + c.len_utf8())
                        .last()
                        .unwrap_or(0);
                    out.push(line[cut..].trim_end().to_owned());
                }
            }
        }
    }
    out.extend(sanitize_paragraph(&paragraph));
    if let Some((marker, _)) = fence {
        out.push(marker);
    }
}

/// The marker and info string of a line that opens a fenced code block:
/// three or more backticks (with no backtick in the info string) or
/// tildes.
fn fence_open(line: &str) -> Option<(&str, &str)> {
    let c = line.chars().next().filter(|c| matches!(c, '`' | '~'))?;
    let len = line.len() - line.trim_start_matches(c).len();
    if len < 3 {
        return None;
    }
    let (marker, info) = line.split_at(len);
    (c == '~' || !info.contains('`')).then_some((marker, info.trim()))
}

/// Whether `line` closes the fence opened with `marker`.
fn closes_fence(line: &str, marker: &str) -> bool {
    let c = marker.chars().next().unwrap_or('`');
    line.len() >= marker.len() && line.chars().all(|x| x == c)
}

/// The info string to write for a fenced block: as given when it names a
/// language other than Rust (`json`), else `text`, since rustdoc would
/// compile an unmarked or Rust block as a doctest of the generated code.
fn fence_info(info: &str) -> &str {
    let is_rust_tag = |t: &str| {
        matches!(
            t,
            "rust"
                | "ignore"
                | "should_panic"
                | "no_run"
                | "compile_fail"
                | "test_harness"
                | "standalone_crate"
        ) || t.starts_with("edition")
            || t.starts_with("ignore-")
    };
    let mut tags = info
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty())
        .peekable();
    if tags.peek().is_none() || tags.any(is_rust_tag) {
        "text"
    } else {
        info
    }
}

/// The lines of a paragraph (trimmed), sanitized: text outside code
/// spans is escaped; code spans, which rustdoc shows verbatim, are kept,
/// also when they wrap to the next line.
fn sanitize_paragraph(lines: &[&str]) -> Vec<String> {
    if lines.is_empty() {
        return Vec::new();
    }
    let text = lines.join("\n");
    let mut out = String::with_capacity(text.len() + 8);
    let mut pos = 0;
    for (start, end) in code_spans(&text) {
        sanitize_text(&text[pos..start], &mut out);
        out.push_str(&text[start..end]);
        pos = end;
    }
    sanitize_text(&text[pos..], &mut out);
    out.split('\n').map(str::to_owned).collect()
}

/// The byte ranges of the code spans of `text`, as CommonMark finds them:
/// a run of backticks opens one only if a run of the same length follows
/// (else it is literal text); a backslash-escaped backtick opens none.
fn code_spans(text: &str) -> Vec<(usize, usize)> {
    let bytes = text.as_bytes();
    let run_at = |i: usize| bytes[i..].iter().take_while(|&&b| b == b'`').count();
    let mut spans = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'`' => {
                let len = run_at(i);
                let mut j = i + len;
                let close = loop {
                    match bytes[j.min(bytes.len())..].iter().position(|&b| b == b'`') {
                        None => break None,
                        Some(at) => {
                            let run = run_at(j + at);
                            if run == len {
                                break Some(j + at + run);
                            }
                            j += at + run;
                        }
                    }
                };
                match close {
                    Some(end) => {
                        spans.push((i, end));
                        i = end;
                    }
                    None => i += len,
                }
            }
            _ => i += 1,
        }
    }
    spans
}

/// One line, sanitized as a paragraph of its own.
#[cfg(test)]
fn sanitize(line: &str) -> String {
    sanitize_paragraph(&[line.trim()]).concat()
}

/// Escapes brackets and turns URLs into autolinks, word by word.
fn sanitize_text(text: &str, out: &mut String) {
    for (i, word) in text.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        // A word may hold a line break (in a paragraph's text).
        if let Some((first, rest)) = word.split_once('\n') {
            sanitize_text(first, out);
            out.push('\n');
            sanitize_text(rest, out);
            continue;
        }
        let scheme = word.find("https://").or_else(|| word.find("http://"));
        match scheme {
            Some(at) => {
                let (before, url) = word.split_at(at);
                let end = url
                    .find([')', ',', ';', '>', '<', '"', ']'])
                    .unwrap_or(url.len());
                let (url, after) = url.split_at(end);
                let trimmed = url.trim_end_matches('.');
                // Already an autolink: `<https://...>`.
                let (before, after) = match (before.strip_suffix('<'), after.strip_prefix('>')) {
                    (Some(b), Some(a)) if trimmed.len() == url.len() => (b, a),
                    _ => (before, after),
                };
                escape_into(before, out);
                out.push('<');
                out.push_str(trimmed);
                out.push('>');
                out.push_str(&url[trimmed.len()..]);
                escape_into(after, out);
            }
            None => escape_into(word, out),
        }
    }
}

/// Escapes what rustdoc would read as a link or an HTML tag.
fn escape_into(text: &str, out: &mut String) {
    for c in text.chars() {
        if matches!(c, '[' | ']' | '<' | '>') {
            out.push('\\');
        }
        out.push(c);
    }
}

/// `#[doc = "..."]` attributes: the proto comments, a blank line, then the
/// generated description (which alone is used when there are no comments).
fn docs(proto: &[String], generated: &[String]) -> TokenStream {
    let line = |l: &String| {
        if l.is_empty() {
            String::new()
        } else {
            format!(" {l}")
        }
    };
    let mut all: Vec<String> = proto.iter().map(line).collect();
    if !all.is_empty() {
        all.push(String::new());
    }
    all.extend(generated.iter().map(line));
    quote! { #( #[doc = #all] )* }
}

fn server(service: &Service, full_name: &str, methods: &[MethodModel]) -> TokenStream {
    let module = format_ident!("{}_server", service.proto_name.to_snake_case());
    let trait_name = ident(&service.name);
    let server_name = format_ident!("{}Server", service.name.trim_start_matches("r#"));
    let service_docs = doc_lines(&service.comments);
    // Outer docs of a module resolve links from the enclosing module.
    let module_doc = format!(
        " Server side of `{full_name}`: implement [`{trait_name}`]({module}::{trait_name}), \
         then add [`{server_name}`]({module}::{server_name}) to a `rsocket_rpc::Router`."
    );
    let trait_docs = docs(
        &service_docs,
        &[format!(
            "The `{full_name}` service. Implement it with `async fn`s and serve it with [`{server_name}`]."
        )],
    );
    let trait_items = methods.iter().map(|m| trait_item(&trait_name, m));
    let infos = methods.iter().map(|m| {
        let name = &m.proto_name;
        let route = &m.route;
        let kind = m.kind.variant();
        quote! { rpc::MethodInfo::new(#name, #route, rpc::MethodKind::#kind) }
    });
    let arms = methods.iter().enumerate().map(|(index, m)| {
        let index = proc_macro2::Literal::usize_unsuffixed(index);
        let ident = &m.ident;
        let input = &m.input;
        let helper = format_ident!(
            "{}",
            match m.kind {
                Kind::Unary => "unary",
                Kind::ServerStreaming => "server_streaming",
                Kind::ClientStreaming => "client_streaming",
                Kind::BidiStreaming => "bidi_streaming",
                Kind::FireAndForget => "fire_and_forget",
            }
        );
        let request = if m.kind.streams_in() {
            quote! { rpc::Request<rpc::Streaming<#input>> }
        } else {
            quote! { rpc::Request<#input> }
        };
        // Called by its path, not as `inner.method(..)`: on the `Arc`, a
        // method named `clone` (or `as_ref`, `into`, ...) would be the
        // `Arc`'s own.
        quote! {
            #index => rpc::#helper(call, move |request: #request| async move {
                <T as #trait_name>::#ident(&*inner, request).await
            }),
        }
    });
    let call_body = if methods.is_empty() {
        quote! {
            let _ = call;
            rpc::ServerReply::unimplemented(method)
        }
    } else {
        quote! {
            let inner = rpc::Arc::clone(&self.inner);
            match method {
                #(#arms)*
                _ => rpc::ServerReply::unimplemented(method),
            }
        }
    };
    let server_doc =
        format!(" Serves a [`{trait_name}`] implementation: add it to a `rsocket_rpc::Router`.");
    quote! {
        #[doc = #module_doc]
        pub mod #module {
            use ::rsocket_rpc::codegen as rpc;

            #trait_docs
            // Method names come from the proto: `FromFile` is `from_file(&self)`.
            #[allow(clippy::wrong_self_convention)]
            pub trait #trait_name: ::core::marker::Send + ::core::marker::Sync + 'static {
                #(#trait_items)*
            }

            #[doc = #server_doc]
            pub struct #server_name<T> {
                inner: rpc::Arc<T>,
            }

            impl<T> #server_name<T> {
                /// Wraps an implementation.
                pub fn new(inner: T) -> Self {
                    Self::from_arc(rpc::Arc::new(inner))
                }

                /// Wraps an implementation that is shared with other code.
                pub fn from_arc(inner: rpc::Arc<T>) -> Self {
                    Self { inner }
                }
            }

            impl<T> ::core::clone::Clone for #server_name<T> {
                fn clone(&self) -> Self {
                    Self { inner: rpc::Arc::clone(&self.inner) }
                }
            }

            impl<T> ::core::fmt::Debug for #server_name<T> {
                fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                    f.write_str(stringify!(#server_name))
                }
            }

            /// The fully qualified service name.
            pub const SERVICE_NAME: &str = #full_name;

            const METHODS: &[rpc::MethodInfo] = &[#(#infos),*];

            impl<T: #trait_name> rpc::Service for #server_name<T> {
                fn name(&self) -> &'static str {
                    SERVICE_NAME
                }

                fn methods(&self) -> &'static [rpc::MethodInfo] {
                    METHODS
                }

                fn call(&self, method: usize, call: rpc::ServerCall) -> rpc::ServerReply {
                    #call_body
                }
            }
        }
    }
}

/// A method's doc comment, the same on the server trait and the client:
/// the proto comments, its kind and route, and the idempotent mark.
fn method_docs(m: &MethodModel) -> TokenStream {
    let mut generated = vec![format!("{}; route `{}`.", m.kind.describe(), m.route)];
    if m.idempotent {
        generated.push(String::new());
        generated.push(
            "Idempotent: over a load balancer it is sent again, to another server, \
             if its connection dies with it in flight."
                .to_owned(),
        );
    }
    docs(&m.docs, &generated)
}

fn trait_item(trait_name: &Ident, m: &MethodModel) -> TokenStream {
    let ident = &m.ident;
    let input = &m.input;
    let output = &m.output;
    let method_docs = method_docs(m);
    let request = if m.kind.streams_in() {
        quote! { rpc::Request<rpc::Streaming<#input>> }
    } else {
        quote! { rpc::Request<#input> }
    };
    if m.kind.streams_out() {
        let stream = &m.stream_type;
        let stream_doc = format!(
            " The stream of messages [`{trait_name}::{}`] answers with; \
             `rsocket_rpc::BoxStream<{}>` fits any stream.",
            ident.to_string().trim_start_matches("r#"),
            output.to_string().rsplit(' ').next().unwrap_or_default(),
        );
        quote! {
            #[doc = #stream_doc]
            type #stream: rpc::Stream<Item = ::core::result::Result<#output, rpc::Status>>
                + ::core::marker::Send
                + 'static;

            #method_docs
            fn #ident(
                &self,
                request: #request,
            ) -> impl rpc::Future<
                Output = ::core::result::Result<rpc::Response<Self::#stream>, rpc::Status>,
            > + ::core::marker::Send;
        }
    } else if m.kind == Kind::FireAndForget {
        quote! {
            #method_docs
            fn #ident(
                &self,
                request: #request,
            ) -> impl rpc::Future<Output = ::core::result::Result<(), rpc::Status>>
                   + ::core::marker::Send;
        }
    } else {
        quote! {
            #method_docs
            fn #ident(
                &self,
                request: #request,
            ) -> impl rpc::Future<
                Output = ::core::result::Result<rpc::Response<#output>, rpc::Status>,
            > + ::core::marker::Send;
        }
    }
}

fn client(service: &Service, full_name: &str, methods: &[MethodModel]) -> TokenStream {
    let module = format_ident!("{}_client", service.proto_name.to_snake_case());
    let client_name = format_ident!("{}Client", service.name.trim_start_matches("r#"));
    let module_doc =
        format!(" Client side of `{full_name}`: [`{client_name}`]({module}::{client_name}).");
    let client_docs = docs(
        &doc_lines(&service.comments),
        &[format!(
            "Calls `{full_name}` over any `RSocket`: a connection's requester, a router, a load balancer."
        )],
    );
    let fns = methods.iter().map(client_method);
    quote! {
        #[doc = #module_doc]
        pub mod #module {
            use ::rsocket_rpc::codegen as rpc;

            #client_docs
            #[derive(Debug, Clone)]
            pub struct #client_name<R> {
                inner: rpc::Client<R>,
            }

            #[allow(clippy::wrong_self_convention)]
            impl<R: rpc::RSocket> #client_name<R> {
                /// A client with default options over `rsocket`.
                pub fn new(rsocket: R) -> Self {
                    Self { inner: rpc::Client::new(rsocket) }
                }

                /// A client over a configured `rsocket_rpc::Client`.
                pub fn from_client(inner: rpc::Client<R>) -> Self {
                    Self { inner }
                }

                /// Adds an interceptor that runs before every call.
                pub fn with_interceptor(self, interceptor: impl rpc::Interceptor) -> Self {
                    Self { inner: self.inner.interceptor(interceptor) }
                }

                /// Sets the deadline of calls that do not set their own.
                pub fn with_timeout(self, timeout: rpc::Duration) -> Self {
                    Self { inner: self.inner.timeout(timeout) }
                }

                /// Limits the size of response messages this client decodes.
                pub fn max_decoding_message_size(self, limit: usize) -> Self {
                    Self { inner: self.inner.max_decoding_message_size(limit) }
                }

                /// The untyped client underneath.
                pub fn client(&self) -> &rpc::Client<R> {
                    &self.inner
                }

                #(#fns)*
            }
        }
    }
}

fn client_method(m: &MethodModel) -> TokenStream {
    let ident = &m.client_ident;
    let input = &m.input;
    let output = &m.output;
    let route = &m.route;
    let method_docs = method_docs(m);
    let (arg, request, ret, call) = match m.kind {
        Kind::Unary => (
            quote! { impl rpc::IntoRequest<#input> },
            quote! { request.into_request() },
            quote! { rpc::Response<#output> },
            quote! { unary },
        ),
        Kind::FireAndForget => (
            quote! { impl rpc::IntoRequest<#input> },
            quote! { request.into_request() },
            quote! { () },
            quote! { fire_and_forget },
        ),
        Kind::ServerStreaming => (
            quote! { impl rpc::IntoRequest<#input> },
            quote! { request.into_request() },
            quote! { rpc::Streaming<#output> },
            quote! { server_streaming },
        ),
        Kind::ClientStreaming => (
            quote! { impl rpc::IntoStreamingRequest<Message = #input> },
            quote! { request.into_streaming_request() },
            quote! { rpc::Response<#output> },
            quote! { client_streaming },
        ),
        Kind::BidiStreaming => (
            quote! { impl rpc::IntoStreamingRequest<Message = #input> },
            quote! { request.into_streaming_request() },
            quote! { rpc::Streaming<#output> },
            quote! { bidi_streaming },
        ),
    };
    if m.idempotent {
        let hinted = format_ident!("{}_hinted", call.to_string());
        return quote! {
            #method_docs
            pub fn #ident(
                &self,
                request: #arg,
            ) -> impl rpc::Future<Output = ::core::result::Result<#ret, rpc::Status>> + '_ {
                self.inner.#hinted(#route, #request, rpc::CallHints::IDEMPOTENT)
            }
        };
    }
    quote! {
        #method_docs
        pub fn #ident(
            &self,
            request: #arg,
        ) -> impl rpc::Future<Output = ::core::result::Result<#ret, rpc::Status>> + '_ {
            self.inner.#call(#route, #request)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitizes_doc_lines() {
        assert_eq!(
            sanitize("  see [foo] and <bar>"),
            "see \\[foo\\] and \\<bar\\>"
        );
        assert_eq!(
            sanitize("docs at https://example.com/a_b."),
            "docs at <https://example.com/a_b>."
        );
        assert_eq!(sanitize("(https://x.y/z)"), "(<https://x.y/z>)");
        assert_eq!(sanitize("see <https://x.y/z>."), "see <https://x.y/z>.");
        assert_eq!(sanitize("snake_case *bold*"), "snake_case *bold*");
        assert_eq!(sanitize("a `list<T>` of [x]"), "a `list<T>` of \\[x\\]");
    }

    fn block(lines: &[&str]) -> Vec<String> {
        let lines: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
        let mut out = Vec::new();
        sanitize_block(&lines, &mut out);
        out
    }

    #[test]
    fn fenced_code_is_kept_and_never_a_doctest() {
        // Unmarked and Rust blocks become `text`; their lines are kept as
        // they are, less the fence's indentation.
        assert_eq!(
            block(&[
                " see [x]:",
                " ```",
                " let a = [1];",
                "   indented <b>",
                " ```"
            ]),
            [
                "see \\[x\\]:",
                "```text",
                "let a = [1];",
                "  indented <b>",
                "```"
            ]
        );
        assert_eq!(
            block(&[" ```rust,no_run", " f()", " ```"]),
            ["```text", "f()", "```"]
        );
        assert_eq!(
            block(&[" ~~~ rust", " f()", " ~~~"]),
            ["~~~text", "f()", "~~~"]
        );
        // Another language is kept.
        assert_eq!(
            block(&[" ```json", " [1]", " ````"]),
            ["```json", "[1]", "```"]
        );
        // An unclosed fence is closed; a shorter run does not close it.
        assert_eq!(
            block(&[" ````", " ```", " x"]),
            ["````text", "```", "x", "````"]
        );
        // Inline code spans are not fences.
        assert_eq!(block(&[" ``a`` [b]"]), ["``a`` \\[b\\]"]);
    }

    #[test]
    fn code_spans_as_markdown_reads_them() {
        // A span that wraps to the next line of its paragraph.
        assert_eq!(
            block(&[" a `b [c]", " d` [e]", "", " `f [g]", " `"]),
            ["a `b [c]", "d` \\[e\\]", "", "`f [g]", "`"]
        );
        // A paragraph break ends an unclosed span: it was literal.
        assert_eq!(
            block(&[" a `b [c]", "", " d` [e]"]),
            ["a `b \\[c\\]", "", "d` \\[e\\]"]
        );
        // Runs pair by length; an escaped backtick opens nothing.
        assert_eq!(
            block(&[" ``a ` [b]`` [c] \\` [d] `x`"]),
            ["``a ` [b]`` \\[c\\] \\` \\[d\\] `x`"]
        );
        // A URL at the end of a line that goes on.
        assert_eq!(
            block(&[" see https://x.y/z", " next [a]"]),
            ["see <https://x.y/z>", "next \\[a\\]"]
        );
    }

    #[test]
    fn type_paths() {
        assert_eq!(
            type_path("HelloRequest", "r").unwrap().to_string(),
            "super :: HelloRequest"
        );
        assert_eq!(
            type_path("::prost_types::Empty", "r").unwrap().to_string(),
            ":: prost_types :: Empty"
        );
    }
}
