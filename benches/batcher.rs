//! Scheduler overhead per request: queue admission, batch forming, the hop to an instance thread, the split and the
//! answer, with a backend that does no work (it returns its inputs). Measured at 1 and 64 requests in flight.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice::backend::{BackendError, BackendInstance, ModelSignature, TensorSpec};
use sluice::config::{ExecutionProviderKind, ModelSettings};
use sluice::scheduler::{Job, Scheduler};
use sluice::tensor::{DataType, Tensor};
use std::time::Duration;

struct Echo;

impl BackendInstance for Echo {
    fn infer(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, BackendError> {
        Ok(inputs.to_vec())
    }
}

fn settings() -> ModelSettings {
    ModelSettings {
        max_batch_size: 64,
        instances: 1,
        threads: 1,
        execution_providers: vec![ExecutionProviderKind::Cpu],
        max_queue_delay: Duration::ZERO,
        preferred_batch_sizes: vec![],
        wait_when_alone: true,
        queue_capacity: 4096,
        queue_max_rows: 4096,
        queue_timeout: Duration::from_secs(10),
        priority_levels: 1,
        default_priority: 1,
        instance_thread_nice: 0,
        precise_batch_timer: true,
        cache_enabled: false,
        cache_ttl: None,
        idempotent: true,
    }
}

fn bench_scheduler(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let spec = TensorSpec { name: "x".into(), dtype: DataType::F32, dims: vec![-1, 16] };
    let signature = ModelSignature { inputs: vec![spec.clone()], outputs: vec![spec] };
    let scheduler = runtime.block_on(async { Scheduler::start("echo".into(), &signature, settings(), sluice::backend::Executor::Threads(vec![Box::new(Echo)]), sluice::metrics::ModelMetrics::noop()) });
    let scheduler = std::sync::Arc::new(scheduler);
    let input = Tensor::from_slice(DataType::F32, vec![1, 16], &[0.5f32; 16]).unwrap();
    let job = || Job { inputs: vec![input.clone()], rows: 1, priority: None, timeout: None, deadline: None };

    let mut g = c.benchmark_group("scheduler");
    g.throughput(Throughput::Elements(1));
    g.bench_function("one_in_flight", |b| {
        b.to_async(&runtime).iter(|| async { scheduler.infer(job()).await.unwrap() });
    });
    g.throughput(Throughput::Elements(64));
    g.bench_function("64_in_flight", |b| {
        b.to_async(&runtime).iter(|| async {
            let handles: Vec<_> = (0..64)
                .map(|_| {
                    let s = scheduler.clone();
                    let j = job();
                    tokio::spawn(async move { s.infer(j).await.unwrap() })
                })
                .collect();
            for h in handles {
                h.await.unwrap();
            }
        });
    });
    g.finish();
}

criterion_group!(benches, bench_scheduler);
criterion_main!(benches);
