//! Runs a loaded program on the calling (blocking) thread: a core module's `_start` through
//! the WASI preview 1 linker, or a component's `wasi:cli/run` through the WASI 0.2 linker.
//! Both get the same context (the task's args, env, stdin, streams and one preopened
//! directory), the memory limiter and the epoch callback, and end the same way: an exit code,
//! or a failure in plain words, with a limit that stopped the run reported as that limit.
//!
//! The two WASI linkers are built once per worker ([`Linkers`]), and each module is
//! pre-linked against them once (an `InstancePre`, its imports resolved): a warm task only
//! creates its store and instantiates.

use std::sync::Arc;

use vgas_shared::wire::TaskOutcome;
use wasmtime::component::ResourceTable;
use wasmtime::{Engine, InstancePre, Linker, Store, Trap};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::sync::CommandPre;
use wasmtime_wasi::{I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::cache::{RecentlyUsed, MEMORY_ENTRIES};
use super::guard::{Guard, Limiter};
use super::Program;

/// Modules kept pre-linked: as many as compiled modules are kept in memory, so a module
/// warm in one is warm in the other.
const PRELINKED_ENTRIES: usize = MEMORY_ENTRIES;

/// The WASI preview 1 and 0.2 linkers of one engine, and the modules recently pre-linked
/// against them.
pub(crate) struct Linkers {
    core: Linker<CoreState>,
    component: wasmtime::component::Linker<ComponentState>,
    prelinked: RecentlyUsed<Prelinked>,
}

impl std::fmt::Debug for Linkers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Linkers").finish_non_exhaustive()
    }
}

/// A program with its imports resolved, ready to instantiate into a fresh store.
#[derive(Clone)]
pub(crate) enum Prelinked {
    Core(InstancePre<CoreState>),
    Component(CommandPre<ComponentState>),
}

impl Linkers {
    /// Both linkers with every WASI function added.
    pub(crate) fn new(engine: &Engine) -> wasmtime::Result<Linkers> {
        let mut core = Linker::new(engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut core, |s: &mut CoreState| &mut s.wasi)?;
        let mut component = wasmtime::component::Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut component)?;
        Ok(Linkers {
            core,
            component,
            prelinked: RecentlyUsed::new(PRELINKED_ENTRIES),
        })
    }

    /// Forgets every pre-linked module.
    pub(crate) fn forget(&self) {
        self.prelinked.clear();
    }

    /// `program` (module `hex`) pre-linked: from the recent ones, or linked now. An error
    /// is an import no WASI linker offers, or a component that is no command.
    pub(crate) fn prelinked(&self, hex: &str, program: &Program) -> wasmtime::Result<Prelinked> {
        if let Some(p) = self.prelinked.get(hex) {
            return Ok(p);
        }
        let linked = match program {
            Program::Core(module) => Prelinked::Core(self.core.instantiate_pre(module)?),
            Program::Component(component) => {
                Prelinked::Component(CommandPre::new(self.component.instantiate_pre(component)?)?)
            }
        };
        self.prelinked.put(hex, linked.clone());
        Ok(linked)
    }
}

/// The export a component must have to run as a task: the `run` of the `wasi:cli/command`
/// world, any 0.2 release (wasmtime links all of them).
const COMPONENT_RUN_EXPORT: &str = "wasi:cli/run@0.2";

/// A core module's store data: the WASI preview 1 context and the limiter.
pub(crate) struct CoreState {
    wasi: WasiP1Ctx,
    limiter: Limiter,
}

/// A component's store data: the WASI context, its resource table and the limiter.
pub(crate) struct ComponentState {
    ctx: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
}

impl WasiView for ComponentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

/// Why `program` cannot run as a task (it is no WASI command), worded to follow its name.
pub(crate) fn missing_entry(engine: &Engine, program: &Program) -> Option<String> {
    match program {
        Program::Core(m) if m.get_export("_start").is_none() => Some(
            "exports no `_start` function, so it is not a WASI command \
             (a library or reactor module cannot run as a task)"
                .into(),
        ),
        Program::Component(c)
            if !c
                .component_type()
                .exports(engine)
                .any(|(name, _)| name.starts_with(COMPONENT_RUN_EXPORT)) =>
        {
            Some(format!(
                "is a component that exports no `{COMPONENT_RUN_EXPORT}.x` interface, so it is \
                 not a WASI command"
            ))
        }
        _ => None,
    }
}

/// Runs `program` (module `hex`) to its end with the context built from `wasi`.
pub(crate) fn run_program(
    engine: &Engine,
    linkers: &Linkers,
    hex: &str,
    program: &Program,
    mut wasi: WasiCtxBuilder,
    guard: &Arc<Guard>,
) -> TaskOutcome {
    let limiter = Limiter(guard.clone());
    let result = match linkers.prelinked(hex, program) {
        Err(e) => Err(Failed::Start(e)),
        Ok(Prelinked::Core(pre)) => run_core(engine, &pre, wasi.build_p1(), limiter, guard),
        Ok(Prelinked::Component(pre)) => {
            let state = ComponentState {
                ctx: wasi.build(),
                table: ResourceTable::new(),
                limiter,
            };
            run_component(engine, &pre, state, guard)
        }
    };
    if let Some(stopped) = guard.outcome() {
        return stopped;
    }
    match result {
        Ok(exit_code) => TaskOutcome::Exited { exit_code },
        Err(Failed::Start(e)) | Err(Failed::Run(e)) if e.downcast_ref::<I32Exit>().is_some() => {
            TaskOutcome::Exited {
                exit_code: e.downcast_ref::<I32Exit>().map_or(1, |x| x.0),
            }
        }
        Err(Failed::Start(e)) | Err(Failed::Run(e)) if e.downcast_ref::<Trap>().is_some() => {
            TaskOutcome::Error {
                message: format!("the module trapped: {e:?}"),
            }
        }
        Err(Failed::Start(e)) => TaskOutcome::Error {
            message: format!("the module could not be started: {e:#}"),
        },
        Err(Failed::Run(e)) => TaskOutcome::Error {
            message: format!("the module failed: {e:?}"),
        },
    }
}

/// Where a run failed.
enum Failed {
    Start(wasmtime::Error),
    Run(wasmtime::Error),
}

fn run_core(
    engine: &Engine,
    pre: &InstancePre<CoreState>,
    wasi: WasiP1Ctx,
    limiter: Limiter,
    guard: &Arc<Guard>,
) -> Result<i32, Failed> {
    let mut store = Store::new(engine, CoreState { wasi, limiter });
    store.limiter(|s| &mut s.limiter);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(guard.ticker());
    let instance = pre.instantiate(&mut store).map_err(Failed::Start)?;
    let start = instance
        .get_typed_func::<(), ()>(&mut store, "_start")
        .map_err(Failed::Start)?;
    start.call(&mut store, ()).map_err(Failed::Run)?;
    Ok(0)
}

fn run_component(
    engine: &Engine,
    pre: &CommandPre<ComponentState>,
    state: ComponentState,
    guard: &Arc<Guard>,
) -> Result<i32, Failed> {
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limiter);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(guard.ticker());
    let command = pre.instantiate(&mut store).map_err(Failed::Start)?;
    match command.wasi_cli_run().call_run(&mut store) {
        Ok(Ok(())) => Ok(0),
        // `run` returned its error case: the component's way to exit non-zero.
        Ok(Err(())) => Ok(1),
        Err(e) => Err(Failed::Run(e)),
    }
}
