//! Build-script helper for [`rsocket-rpc`](https://docs.rs/rsocket-rpc):
//! `.proto` services become typed RSocket servers and clients.
//!
//! ```text
//!  .proto files ──protox──▶ FileDescriptorSet ──prost-build──▶ $OUT_DIR/<package>.rs
//!   (no system protoc)                          messages (prost) + services (this crate)
//! ```
//!
//! # Getting started
//!
//! ```no_run
//! // build.rs
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     rsocket_rpc_build::configure()
//!         .fire_and_forget("greeter.Greeter/Notify")
//!         .compile_protos(&["proto/greeter.proto"], &["proto"])?;
//!     Ok(())
//! }
//! ```
//!
//! and in the crate: `pub mod greeter { rsocket_rpc::include_proto!("greeter"); }`.
//! The crate needs `rsocket-rpc` as a dependency and nothing else: the
//! generated messages use prost through `rsocket_rpc::codegen::prost`, and
//! the well-known types (`google.protobuf.Empty`, `Timestamp`, ...) are
//! `rsocket_rpc::codegen::prost_types`. (Adding a `prost` dependency is
//! still needed for calling `prost::Message` methods by name.)
//!
//! # What is generated
//!
//! For each service `Greeter` in package `greeter`, next to the prost
//! messages:
//!
//! * `greeter_server::Greeter`, a trait with one method per RPC (plain
//!   `async fn`s in implementations), an associated stream type per
//!   server-streaming or bidirectional RPC, and
//!   `greeter_server::GreeterServer<T>`, which a `rsocket_rpc::Router`
//!   serves;
//! * `greeter_client::GreeterClient<R>`, with one method per RPC that
//!   returns the call's future (`client.say_hello(request).await`), over
//!   any `R: RSocket`.
//!
//! Method names become snake_case as prost-build makes field names
//! (`GetHTTPStatus` is `get_http_status`, `Type` is `r#type`, `Self` is
//! `self_`). A method named like one of the client's own methods (`new`,
//! `from_client`, `with_interceptor`, `with_timeout`,
//! `max_decoding_message_size`, `client`) gets a `_` on the client only
//! (`new_`). Two methods of a service that would get the same name fail the
//! build with [`Error::DuplicateMethodName`], and a service whose module
//! would have the name of a message's module of nested types (service
//! `Game`, message `GameServer` with a nested enum) with
//! [`Error::ModuleNameClash`].
//!
//! Proto comments become doc comments, escaped so that rustdoc reads no
//! links or HTML in them; a fenced code block is kept as it is, marked
//! `text` unless it names a language other than Rust, so that none is
//! compiled as a doctest. The code only wires names, routes and types to
//! `rsocket-rpc`, where the logic lives.
//!
//! # Fire-and-forget methods
//!
//! A unary method becomes fire-and-forget (REQUEST_FNF, nothing comes back)
//! when named in [`Builder::fire_and_forget`], or with the method option
//! that rsocket-rpc-java used, which this crate provides as
//! `rsocket/options.proto`:
//!
//! ```proto
//! import "rsocket/options.proto";
//!
//! service Greeter {
//!   rpc Notify (HelloRequest) returns (google.protobuf.Empty) {
//!     option (io.rsocket.rpc.options) = { fire_and_forget: true };
//!   }
//! }
//! ```
//!
//! # Idempotent methods
//!
//! A unary or server-streaming method marked idempotent, in
//! [`Builder::idempotent`] or with `option (io.rsocket.rpc.options) = {
//! idempotent: true };`, is called with `CallHints::IDEMPOTENT`: over the
//! load balancer (`rsocket-balance`), such a call is sent again to another
//! server when its connection died with the call in flight (a call that is
//! not marked fails then, since the server may have processed it). Over a
//! plain connection the mark changes nothing.
#![forbid(unsafe_code)]

mod generator;

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use heck::ToSnakeCase;
use prost_reflect::DescriptorPool;
use protox::file::{
    ChainFileResolver, File, FileResolver, GoogleFileResolver, IncludeFileResolver,
};

use crate::generator::{RpcGenerator, Shared};

/// The path under which `rsocket/options.proto` is importable.
pub const OPTIONS_PROTO_PATH: &str = "rsocket/options.proto";

/// The method options: fire-and-forget, as in rsocket-rpc-java (field 1057
/// of `google.protobuf.MethodOptions`), and idempotent.
pub const OPTIONS_PROTO: &str = r#"syntax = "proto3";

package io.rsocket.rpc;

import "google/protobuf/descriptor.proto";

extend google.protobuf.MethodOptions {
  RSocketMethodOptions options = 1057;
}

message RSocketMethodOptions {
  bool fire_and_forget = 1;
  bool idempotent = 2;
}
"#;

/// The fully qualified name of the option extension.
const OPTIONS_EXTENSION: &str = "io.rsocket.rpc.options";

/// What can go wrong while generating code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// protox could not parse or link the `.proto` files.
    #[error("cannot compile the .proto files: {0}")]
    Protox(#[from] Box<protox::Error>),
    /// prost-build failed (writing files, for example).
    #[error("prost-build: {0}")]
    Prost(#[from] std::io::Error),
    /// A route given to [`Builder::fire_and_forget`] names no method.
    #[error("fire_and_forget({route:?}) names no method in the compiled services")]
    UnknownFireAndForget {
        /// The route as given.
        route: String,
    },
    /// A route given to [`Builder::idempotent`] names no method.
    #[error("idempotent({route:?}) names no method in the compiled services")]
    UnknownIdempotent {
        /// The route as given.
        route: String,
    },
    /// A method other than unary or server streaming was marked idempotent
    /// (a channel is never sent twice, and fire-and-forget has no answer
    /// to wait for).
    #[error("{route} ({kind}) cannot be idempotent: only unary and server-streaming methods can")]
    IdempotentNotAllowed {
        /// The method's route.
        route: String,
        /// Its kind, as the generator names it.
        kind: &'static str,
    },
    /// A streaming method was marked fire-and-forget.
    #[error("{route} streams, so it cannot be fire-and-forget")]
    FireAndForgetNotUnary {
        /// The method's route.
        route: String,
    },
    /// Two methods of a service would get the same Rust name, for example
    /// `GetHTTPStatus` and `GetHttpStatus` (both `get_http_status`).
    #[error("{service}: methods {} and {} would both be named `{name}` in Rust", methods[0], methods[1])]
    DuplicateMethodName {
        /// The fully qualified service name.
        service: String,
        /// The Rust name they share.
        name: String,
        /// The two methods, as named in the `.proto` file.
        methods: [String; 2],
    },
    /// A message's module of nested types (prost-build makes one for a
    /// message with nested messages, enums or a `oneof`) would have the
    /// name of a service's generated module: message `GameServer` with a
    /// nested enum, and service `Game`, both want `game_server`.
    #[error(
        "message {message} and service {service} would both generate `mod {module}`; \
         rename one of them"
    )]
    ModuleNameClash {
        /// The module name.
        module: String,
        /// The fully qualified service name.
        service: String,
        /// The fully qualified message name.
        message: String,
    },
    /// prost-build resolved a message type to something that is not a path.
    #[error("{route}: cannot use the type path {path:?}")]
    BadTypePath {
        /// The method's route.
        route: String,
        /// The path prost-build gave.
        path: String,
    },
}

/// Starts a [`Builder`] with the defaults: client and server code, no
/// fire-and-forget routes besides the proto options, output to `OUT_DIR`.
pub fn configure() -> Builder {
    Builder {
        build_client: true,
        build_server: true,
        fire_and_forget: Vec::new(),
        idempotent: Vec::new(),
        out_dir: None,
        prost: prost_build::Config::new(),
        emit_rerun_if_changed: std::env::var_os("CARGO").is_some(),
    }
}

/// Compiles `protos` (found through `includes`) with the defaults; see
/// [`configure`].
pub fn compile_protos(
    protos: &[impl AsRef<Path>],
    includes: &[impl AsRef<Path>],
) -> Result<(), Error> {
    configure().compile_protos(protos, includes)
}

/// Options for code generation.
pub struct Builder {
    build_client: bool,
    build_server: bool,
    fire_and_forget: Vec<String>,
    idempotent: Vec<String>,
    out_dir: Option<PathBuf>,
    prost: prost_build::Config,
    emit_rerun_if_changed: bool,
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("build_client", &self.build_client)
            .field("build_server", &self.build_server)
            .field("fire_and_forget", &self.fire_and_forget)
            .field("idempotent", &self.idempotent)
            .field("out_dir", &self.out_dir)
            .finish_non_exhaustive()
    }
}

impl Builder {
    /// Whether to generate `xxx_client` modules (default true).
    pub fn build_client(mut self, enable: bool) -> Self {
        self.build_client = enable;
        self
    }

    /// Whether to generate `xxx_server` modules (default true).
    pub fn build_server(mut self, enable: bool) -> Self {
        self.build_server = enable;
        self
    }

    /// Marks the unary method with this route (`package.Service/Method`) as
    /// fire-and-forget. A route that names no method, or a streaming one,
    /// fails the build.
    pub fn fire_and_forget(mut self, route: impl Into<String>) -> Self {
        self.fire_and_forget.push(route.into());
        self
    }

    /// Marks the unary or server-streaming method with this route as
    /// idempotent (see [the crate docs](crate#idempotent-methods)). A route
    /// that names no method, or a method of another kind, fails the build.
    pub fn idempotent(mut self, route: impl Into<String>) -> Self {
        self.idempotent.push(route.into());
        self
    }

    /// Where the `.rs` files go (default: `OUT_DIR`).
    pub fn out_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.out_dir = Some(dir.into());
        self
    }

    /// Whether to print `cargo:rerun-if-changed` for every `.proto` file read
    /// (default: when running under cargo).
    pub fn emit_rerun_if_changed(mut self, enable: bool) -> Self {
        self.emit_rerun_if_changed = enable;
        self
    }

    /// Changes prost-build's own configuration: type attributes, extern
    /// paths, `bytes` fields, and so on.
    ///
    /// ```
    /// let builder = rsocket_rpc_build::configure().prost_config(|config| {
    ///     config.type_attribute(".", "#[derive(Eq, Hash)]");
    /// });
    /// # let _ = builder;
    /// ```
    pub fn prost_config(mut self, f: impl FnOnce(&mut prost_build::Config)) -> Self {
        f(&mut self.prost);
        self
    }

    /// Replaces prost-build's configuration with `config`.
    pub fn with_prost_config(mut self, config: prost_build::Config) -> Self {
        self.prost = config;
        self
    }

    /// Compiles `protos`, looking up them and their imports in `includes`
    /// (then `rsocket/options.proto` and the well-known types, which are
    /// built in), and writes one `.rs` file per protobuf package.
    pub fn compile_protos(
        mut self,
        protos: &[impl AsRef<Path>],
        includes: &[impl AsRef<Path>],
    ) -> Result<(), Error> {
        let mut resolver = ChainFileResolver::new();
        for include in includes {
            resolver.add(IncludeFileResolver::new(include.as_ref().to_owned()));
        }
        resolver.add(OptionsResolver);
        resolver.add(GoogleFileResolver::new());
        let mut compiler = protox::Compiler::with_file_resolver(resolver);
        compiler.include_imports(true).include_source_info(true);
        compiler
            .open_files(protos.iter().map(AsRef::as_ref))
            .map_err(Box::new)?;

        if self.emit_rerun_if_changed {
            for file in compiler.files() {
                if let Some(path) = file.path() {
                    println!("cargo:rerun-if-changed={}", path.display());
                }
            }
        }

        let pool = compiler.descriptor_pool();
        check_modules(&pool, self.build_server, self.build_client)?;
        let mut fire_and_forget: HashSet<String> = self.fire_and_forget.iter().cloned().collect();
        fire_and_forget.extend(marked(&pool, "fire_and_forget"));
        let mut idempotent: HashSet<String> = self.idempotent.iter().cloned().collect();
        idempotent.extend(marked(&pool, "idempotent"));
        let shared = Rc::new(RefCell::new(Shared {
            fire_and_forget,
            idempotent,
            ..Shared::default()
        }));

        let config = &mut self.prost;
        config
            .prost_path("::rsocket_rpc::codegen::prost")
            .prost_types_path("::rsocket_rpc::codegen::prost_types")
            // The option message is only read here, never used at run time.
            .extern_path(".io.rsocket.rpc", "::rsocket_rpc::codegen::prost_types")
            .service_generator(Box::new(RpcGenerator {
                build_client: self.build_client,
                build_server: self.build_server,
                shared: shared.clone(),
            }));
        if let Some(dir) = &self.out_dir {
            std::fs::create_dir_all(dir)?;
            config.out_dir(dir);
        }
        config.compile_fds(compiler.file_descriptor_set())?;

        let mut shared = shared.borrow_mut();
        if let Some(e) = shared.errors.drain(..).next() {
            return Err(e);
        }
        for route in &self.fire_and_forget {
            if !shared.used.contains(route) {
                return Err(Error::UnknownFireAndForget {
                    route: route.clone(),
                });
            }
        }
        for route in &self.idempotent {
            if !shared.used_idempotent.contains(route) {
                return Err(Error::UnknownIdempotent {
                    route: route.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Serves `rsocket/options.proto` from memory.
struct OptionsResolver;

impl FileResolver for OptionsResolver {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        if name == OPTIONS_PROTO_PATH {
            File::from_source(name, OPTIONS_PROTO)
        } else {
            Err(protox::Error::file_not_found(name))
        }
    }
}

/// Fails when a service's `xxx_server` or `xxx_client` module would have
/// the name of a module prost-build makes for a message of the same
/// package: its nested messages, enums and `oneof`s.
fn check_modules(pool: &DescriptorPool, server: bool, client: bool) -> Result<(), Error> {
    for service in pool.services() {
        let snake = service.name().to_snake_case();
        let modules = [(server, "_server"), (client, "_client")]
            .into_iter()
            .filter(|(enabled, _)| *enabled)
            .map(|(_, suffix)| format!("{snake}{suffix}"));
        for module in modules {
            let clash = pool.all_messages().find(|m| {
                m.parent_message().is_none()
                    && m.package_name() == service.package_name()
                    && m.name().to_snake_case() == module
                    && (m.child_enums().len() > 0
                        || m.child_messages().any(|c| !c.is_map_entry())
                        || m.oneofs().any(|o| !o.is_synthetic()))
            });
            if let Some(message) = clash {
                return Err(Error::ModuleNameClash {
                    module,
                    service: service.full_name().to_owned(),
                    message: message.full_name().to_owned(),
                });
            }
        }
    }
    Ok(())
}

/// Routes of methods whose options set the boolean `field` of
/// `(io.rsocket.rpc.options)`.
fn marked(pool: &DescriptorPool, field: &str) -> Vec<String> {
    let Some(ext) = pool.get_extension_by_name(OPTIONS_EXTENSION) else {
        return Vec::new();
    };
    let mut routes = Vec::new();
    for service in pool.services() {
        for method in service.methods() {
            let options = method.options();
            if !options.has_extension(&ext) {
                continue;
            }
            let value = options.get_extension(&ext);
            let marked = value
                .as_message()
                .and_then(|m| m.get_field_by_name(field))
                .and_then(|v| v.as_bool())
                .unwrap_or(false);
            if marked {
                routes.push(format!("{}/{}", service.full_name(), method.name()));
            }
        }
    }
    routes
}
