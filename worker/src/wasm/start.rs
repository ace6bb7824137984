//! Runs a loaded program on the calling (blocking) thread: a core module's `_start` through
//! the WASI preview 1 linker, or a component's `wasi:cli/run` through the WASI 0.2 linker.
//! Both get the same context (the task's args, env, stdin, streams and one preopened
//! directory), the memory limiter and the epoch callback, and end the same way: an exit code,
//! or a failure in plain words, with a limit that stopped the run reported as that limit.

use std::sync::Arc;

use vgas_shared::wire::TaskOutcome;
use wasmtime::component::{Component, ResourceTable};
use wasmtime::{Engine, Linker, Module, Store, Trap};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::sync::Command;
use wasmtime_wasi::{I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::guard::{Guard, Limiter};
use super::Program;

/// The export a component must have to run as a task: the `run` of the `wasi:cli/command`
/// world, any 0.2 release (wasmtime links all of them).
const COMPONENT_RUN_EXPORT: &str = "wasi:cli/run@0.2";

/// A core module's store data: the WASI preview 1 context and the limiter.
struct CoreState {
    wasi: WasiP1Ctx,
    limiter: Limiter,
}

/// A component's store data: the WASI context, its resource table and the limiter.
struct ComponentState {
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

/// Runs `program` to its end with the context built from `wasi`.
pub(crate) fn run_program(
    engine: &Engine,
    program: &Program,
    mut wasi: WasiCtxBuilder,
    guard: &Arc<Guard>,
) -> TaskOutcome {
    let limiter = Limiter(guard.clone());
    let result = match program {
        Program::Core(module) => run_core(engine, module, wasi.build_p1(), limiter, guard),
        Program::Component(component) => {
            let state = ComponentState {
                ctx: wasi.build(),
                table: ResourceTable::new(),
                limiter,
            };
            run_component(engine, component, state, guard)
        }
    };
    if let Some(stopped) = guard.outcome() {
        return stopped;
    }
    match result {
        Ok(exit_code) => TaskOutcome::Exited { exit_code },
        Err(Failed::Link(e)) => TaskOutcome::Error {
            message: format!("the worker could not link WASI: {e}"),
        },
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
    Link(wasmtime::Error),
    Start(wasmtime::Error),
    Run(wasmtime::Error),
}

fn run_core(
    engine: &Engine,
    module: &Module,
    wasi: WasiP1Ctx,
    limiter: Limiter,
    guard: &Arc<Guard>,
) -> Result<i32, Failed> {
    let mut linker: Linker<CoreState> = Linker::new(engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s| &mut s.wasi).map_err(Failed::Link)?;
    let mut store = Store::new(engine, CoreState { wasi, limiter });
    store.limiter(|s| &mut s.limiter);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(guard.ticker());
    let instance = linker
        .instantiate(&mut store, module)
        .map_err(Failed::Start)?;
    let start = instance
        .get_typed_func::<(), ()>(&mut store, "_start")
        .map_err(Failed::Start)?;
    start.call(&mut store, ()).map_err(Failed::Run)?;
    Ok(0)
}

fn run_component(
    engine: &Engine,
    component: &Component,
    state: ComponentState,
    guard: &Arc<Guard>,
) -> Result<i32, Failed> {
    let mut linker = wasmtime::component::Linker::<ComponentState>::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(Failed::Link)?;
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limiter);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(guard.ticker());
    let command = Command::instantiate(&mut store, component, &linker).map_err(Failed::Start)?;
    match command.wasi_cli_run().call_run(&mut store) {
        Ok(Ok(())) => Ok(0),
        // `run` returned its error case: the component's way to exit non-zero.
        Ok(Err(())) => Ok(1),
        Err(e) => Err(Failed::Run(e)),
    }
}
