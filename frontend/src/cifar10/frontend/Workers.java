package cifar10.frontend;

import io.prometheus.client.Collector;
import io.prometheus.client.GaugeMetricFamily;
import java.util.List;
import java.util.Map;
import org.pytorch.serve.wlm.Model;
import org.pytorch.serve.wlm.ModelManager;
import org.pytorch.serve.wlm.ModelVersionedRefs;
import org.pytorch.serve.wlm.WorkerState;
import org.pytorch.serve.wlm.WorkerThread;

/**
 * Each model version's workers on TorchServe's /metrics (registered by {@link Agent}):
 * {@code cifar10_workers{model, version, status}}, read from TorchServe's work-load manager when
 * /metrics is scraped. {@code status} is {@code READY} for a running worker that has loaded the
 * model (what the describe API calls READY), {@code NOT_READY} for the others (starting,
 * restarting, stopped); both are always present, 0 included. TorchServe itself exports no gauge
 * of its workers.
 */
final class Workers extends Collector implements Collector.Describable {
    static final String NAME = "cifar10_workers";
    private static final List<String> LABELS = List.of("model", "version", "status");

    @Override
    public List<MetricFamilySamples> describe() {
        return List.of(family());
    }

    @Override
    public List<MetricFamilySamples> collect() {
        GaugeMetricFamily workers = family();
        ModelManager manager = ModelManager.getInstance();
        if (manager == null) { // not started yet
            return List.of(workers);
        }
        for (Map.Entry<String, ModelVersionedRefs> model : manager.getAllModels()) {
            for (Map.Entry<String, Model> version : model.getValue().getAllVersions()) {
                int ready = 0;
                List<WorkerThread> threads = manager.getWorkers(version.getValue().getModelVersionName());
                for (WorkerThread worker : threads) {
                    if (worker.isRunning() && worker.getState() == WorkerState.WORKER_MODEL_LOADED) {
                        ready += 1;
                    }
                }
                workers.addMetric(List.of(model.getKey(), version.getKey(), "READY"), ready);
                workers.addMetric(List.of(model.getKey(), version.getKey(), "NOT_READY"), threads.size() - ready);
            }
        }
        return List.of(workers);
    }

    private static GaugeMetricFamily family() {
        return new GaugeMetricFamily(NAME, "Workers of each model version, READY or NOT_READY", LABELS);
    }
}
