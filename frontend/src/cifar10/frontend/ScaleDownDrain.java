package cifar10.frontend;

import cifar10.frontend.Agent.UnexpectedBytecode;
import java.io.IOException;
import java.lang.reflect.Field;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicReference;
import org.objectweb.asm.tree.ClassNode;
import org.objectweb.asm.tree.MethodNode;

/**
 * A scale-down that answers the removed worker's batch (applied by {@link Agent}).
 *
 * <p>TorchServe's {@code WorkerThread.shutdown} interrupts the worker's thread and closes its
 * connection to the Python process at once: the batch in flight on that worker is lost (its
 * clients get 500 "Worker died."), while the rest of the queue goes to the other workers. This
 * rewrite calls {@link #shutdown} (ours) first thing in {@code shutdown}: the worker takes no new
 * batch, and shutdown waits until the one in flight is answered (at most {@code responseTimeout})
 * before it goes on as before.
 */
public final class ScaleDownDrain {
    static final String WORKER = "org/pytorch/serve/wlm/WorkerThread";
    static final String AGGREGATOR = "org/pytorch/serve/wlm/BatchAggregator";
    static final String MODEL_CLASS = "org.pytorch.serve.wlm.Model";
    static final long IDLE_MILLIS = 100;
    static final String[] FIELDS = {"running", "state", "currentThread", "aggregator", "responseTimeout"};

    private ScaleDownDrain() {}

    /** WorkerThread's class file with shutdown() starting with ScaleDownDrain.shutdown(this). */
    static byte[] rewrite(byte[] original) throws UnexpectedBytecode, IOException {
        ClassNode worker = Agent.read(original);
        Agent.field(Agent.read(Agent.classBytes(AGGREGATOR)), "jobs"); // the batch in flight, read by shutdown()
        MethodNode shutdown = Agent.method(worker, "shutdown", "()V");
        for (String name : FIELDS) {
            Agent.field(worker, name);
        }
        Agent.callFirst(shutdown, "ScaleDownDrain", "(Ljava/lang/Object;)V", 0);
        return Agent.write(worker);
    }

    /**
     * Stops a serving {@code worker} taking new batches and lets it answer the one it holds: its
     * thread ends its loop after its batch. A worker marked not running may still be waiting
     * for a job inside Model, and under traffic it soon gets one, answers it and ends; a worker
     * idle for IDLE_MILLIS (no traffic) is interrupted here, while it waits, and a job it took in
     * that instant goes back to the queue for the other workers. It is marked scaled down first, so
     * that its thread's exit does not schedule a restart. A worker still loading its model holds no
     * batch: shutdown goes on as it was.
     */
    public static void shutdown(Object worker) {
        try {
            Field state = field(worker, "state");
            if (state.get(worker) != workerState(state.getType(), "WORKER_MODEL_LOADED")) {
                return;
            }
            ((AtomicBoolean) field(worker, "running").get(worker)).set(false);
            state.set(worker, workerState(state.getType(), "WORKER_SCALED_DOWN"));
            AtomicReference<?> current = (AtomicReference<?>) field(worker, "currentThread").get(worker);
            Object aggregator = field(worker, "aggregator").get(worker);
            Map<?, ?> jobs = (Map<?, ?>) field(aggregator, "jobs").get(aggregator);
            long now = System.nanoTime();
            long deadline = now + TimeUnit.SECONDS.toNanos(field(worker, "responseTimeout").getInt(worker));
            long idleSince = now;
            while (now < deadline && now - idleSince < TimeUnit.MILLISECONDS.toNanos(IDLE_MILLIS)) {
                Thread thread = (Thread) current.get();
                if (thread == null) {
                    return; // its loop ended after its last batch
                }
                if (!(jobs.isEmpty() && waitsForAJob(thread))) {
                    idleSince = System.nanoTime();
                }
                Thread.sleep(2);
                now = System.nanoTime();
            }
            Thread thread = (Thread) current.get();
            if (thread != null && jobs.isEmpty() && waitsForAJob(thread)) {
                thread.interrupt();
                while (inWorkerLoop(thread) && System.nanoTime() < deadline) {
                    Thread.sleep(2);
                }
                aggregator.getClass()
                        .getMethod("sendError", requestType(), String.class, int.class)
                        .invoke(aggregator, null, "Worker scaled down.", 500); // puts taken jobs back in the queue
            }
        } catch (ReflectiveOperationException | RuntimeException error) {
            System.err.println("frontend agent: scale-down without waiting for the batch in flight: " + error);
        } catch (InterruptedException error) {
            Thread.currentThread().interrupt();
        }
    }

    static Class<?> requestType() throws ClassNotFoundException {
        return Class.forName("org.pytorch.serve.util.messages.BaseModelRequest");
    }

    /** The thread still runs WorkerThread's loop (or its exit). */
    static boolean inWorkerLoop(Thread thread) {
        for (StackTraceElement frame : thread.getStackTrace()) {
            if (frame.getClassName().equals(WORKER.replace('/', '.'))) {
                return true;
            }
        }
        return false;
    }

    /** The thread is blocked inside Model (its queue or its lock): it holds no batch. */
    static boolean waitsForAJob(Thread thread) {
        Thread.State state = thread.getState();
        if (state != Thread.State.WAITING && state != Thread.State.TIMED_WAITING) {
            return false;
        }
        for (StackTraceElement frame : thread.getStackTrace()) {
            if (MODEL_CLASS.equals(frame.getClassName())) {
                return true;
            }
        }
        return false;
    }

    @SuppressWarnings({"unchecked", "rawtypes"})
    static Object workerState(Class<?> type, String name) {
        return Enum.valueOf((Class<Enum>) type, name);
    }

    /** A field declared by the object's class or one of its superclasses, made accessible. */
    static Field field(Object owner, String name) throws NoSuchFieldException {
        for (Class<?> type = owner.getClass(); type != null; type = type.getSuperclass()) {
            try {
                Field found = type.getDeclaredField(name);
                found.setAccessible(true);
                return found;
            } catch (NoSuchFieldException notHere) {
                // look in the superclass
            }
        }
        throw new NoSuchFieldException(owner.getClass().getName() + "." + name);
    }
}
