package cifar10.frontend;

import cifar10.frontend.Agent.UnexpectedBytecode;
import java.lang.reflect.Method;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.LinkedBlockingDeque;
import java.util.concurrent.TimeUnit;
import org.objectweb.asm.Opcodes;
import org.objectweb.asm.tree.AbstractInsnNode;
import org.objectweb.asm.tree.ClassNode;
import org.objectweb.asm.tree.FieldInsnNode;
import org.objectweb.asm.tree.InsnNode;
import org.objectweb.asm.tree.JumpInsnNode;
import org.objectweb.asm.tree.LdcInsnNode;
import org.objectweb.asm.tree.MethodInsnNode;
import org.objectweb.asm.tree.MethodNode;
import org.objectweb.asm.tree.VarInsnNode;

/**
 * The drain-the-queue batching policy for TorchServe 0.12's frontend (applied by {@link Agent}).
 *
 * <p>TorchServe's {@code Model.pollBatch} blocks for a worker's first job, then polls the queue
 * with what is left of {@code maxBatchDelay} and stops once that delay is used up: a lone request
 * always waits the whole delay, and a delay of 0 caps every batch at two requests. This rewrites
 * two instructions of that method when the class loads: the loop polls with a timeout of
 * 0 (it takes a job only if one is already queued) and the break on the used-up delay is removed.
 * A worker then never waits for a request that has not arrived, and takes everything already
 * queued, up to {@code batchSize} and up to BATCH_BYTES of request bodies: a batch of large
 * bodies (a flood of maximum-size requests) stays small enough to reach the worker and be
 * answered quickly. Queued requests whose client has gone away are dropped instead of computed.
 * {@code maxBatchDelay} is no longer read by that loop.
 */
public final class DrainBatching {
    static final String MODEL = "org/pytorch/serve/wlm/Model";
    static final String METHOD = "pollBatch";
    static final String DESCRIPTOR = "(Ljava/lang/String;JLjava/util/Map;)V";
    static final String QUEUE = "java/util/concurrent/LinkedBlockingDeque";
    static final String POLL = "(JLjava/util/concurrent/TimeUnit;)Ljava/lang/Object;";
    static final String POLL_OPEN =
            "(Ljava/util/concurrent/LinkedBlockingDeque;JLjava/util/concurrent/TimeUnit;)Ljava/lang/Object;";
    static final String POLL_WITHIN =
            "(Ljava/util/concurrent/LinkedBlockingDeque;JLjava/util/concurrent/TimeUnit;Ljava/util/Map;)Ljava/lang/Object;";
    static final int JOBS_REPO = 4; // pollBatch's third argument: the batch being filled (this, String, long, Map)
    /** The most body bytes one batch carries to a worker, past its first job. */
    static final long BATCH_BYTES = 4L << 20;

    private DrainBatching() {}

    /** Model's class file with pollBatch's loop rewritten; throws if any step does not match. */
    static byte[] rewrite(byte[] original) throws UnexpectedBytecode {
        ClassNode model = Agent.read(original);
        MethodNode poll = Agent.method(model, METHOD, DESCRIPTOR);
        int maxDelay = maxDelayLocal(poll);
        firstJobOfAnOpenClient(poll);
        pollWithoutWaiting(poll, maxDelay);
        removeDelayBreak(poll, maxDelay);
        return Agent.write(model);
    }

    /** The local that `long maxDelay = maxBatchDelay;` stores into: GETFIELD maxBatchDelay, I2L, LSTORE. */
    private static int maxDelayLocal(MethodNode method) throws UnexpectedBytecode {
        List<Integer> found = new ArrayList<>();
        for (AbstractInsnNode insn : method.instructions) {
            if (insn instanceof FieldInsnNode field
                    && insn.getOpcode() == Opcodes.GETFIELD
                    && field.owner.equals(MODEL)
                    && field.name.equals("maxBatchDelay")
                    && next(insn) != null
                    && next(insn).getOpcode() == Opcodes.I2L
                    && next(next(insn)) instanceof VarInsnNode store
                    && store.getOpcode() == Opcodes.LSTORE) {
                found.add(store.var);
            }
        }
        if (found.size() != 1) {
            throw new UnexpectedBytecode(
                    METHOD + ": expected one `long maxDelay = maxBatchDelay`, found " + found.size());
        }
        return found.get(0);
    }

    /**
     * `jobsQueue.poll(maxDelay, MILLISECONDS)` becomes `DrainBatching.pollWithin(jobsQueue, 0,
     * MILLISECONDS, jobsRepo)`: no wait, and no job that would take the batch past BATCH_BYTES.
     */
    static void pollWithoutWaiting(MethodNode method, int maxDelay) throws UnexpectedBytecode {
        List<AbstractInsnNode> loads = new ArrayList<>();
        for (AbstractInsnNode insn : method.instructions) {
            if (isLoad(insn, maxDelay)
                    && next(insn) instanceof FieldInsnNode unit
                    && unit.getOpcode() == Opcodes.GETSTATIC
                    && unit.name.equals("MILLISECONDS")
                    && next(unit) instanceof MethodInsnNode call
                    && call.owner.equals(QUEUE)
                    && call.name.equals("poll")
                    && call.desc.equals(POLL)) {
                loads.add(insn);
            }
        }
        if (loads.size() != 1) {
            throw new UnexpectedBytecode(
                    METHOD + ": expected one jobsQueue.poll(maxDelay, MILLISECONDS), found " + loads.size());
        }
        AbstractInsnNode load = loads.get(0);
        AbstractInsnNode call = next(next(load));
        method.instructions.set(load, new InsnNode(Opcodes.LCONST_0));
        method.instructions.insertBefore(call, new VarInsnNode(Opcodes.ALOAD, JOBS_REPO));
        method.instructions.set(
                call,
                new MethodInsnNode(Opcodes.INVOKESTATIC, "cifar10/frontend/DrainBatching", "pollWithin", POLL_WITHIN));
        method.maxStack += 1;
    }

    /**
     * The batch's first job, `jobsQueue.poll(Long.MAX_VALUE, MILLISECONDS)`, becomes
     * `DrainBatching.pollOpen(jobsQueue, Long.MAX_VALUE, MILLISECONDS)`: the same wait, past the
     * jobs whose client went away.
     */
    static void firstJobOfAnOpenClient(MethodNode method) throws UnexpectedBytecode {
        List<MethodInsnNode> calls = new ArrayList<>();
        for (AbstractInsnNode insn : method.instructions) {
            if (insn instanceof LdcInsnNode forever
                    && Long.valueOf(Long.MAX_VALUE).equals(forever.cst)
                    && next(insn) instanceof FieldInsnNode unit
                    && unit.name.equals("MILLISECONDS")
                    && next(unit) instanceof MethodInsnNode call
                    && call.owner.equals(QUEUE)
                    && call.name.equals("poll")
                    && call.desc.equals(POLL)) {
                calls.add(call);
            }
        }
        if (calls.size() != 1) {
            throw new UnexpectedBytecode(
                    METHOD + ": expected one jobsQueue.poll(Long.MAX_VALUE, MILLISECONDS), found " + calls.size());
        }
        method.instructions.set(
                calls.get(0),
                new MethodInsnNode(Opcodes.INVOKESTATIC, "cifar10/frontend/DrainBatching", "pollOpen", POLL_OPEN));
    }

    /** The first queued job whose client is still connected, waiting up to `timeout` for one. */
    public static Object pollOpen(LinkedBlockingDeque<Object> queue, long timeout, TimeUnit unit)
            throws InterruptedException {
        Object job = queue.poll(timeout, unit);
        while (job != null && clientLeft(job)) {
            job = queue.poll(timeout, unit);
        }
        return job;
    }

    /**
     * The next queued job if one is there and the batch's bodies stay within BATCH_BYTES with it;
     * else null (the batch is complete), and that job stays first in the queue: it is looked at
     * before it is taken, so nothing is ever put back (the queue is bounded, and the frontend's
     * threads keep adding to it). Jobs whose client's connection is closed are dropped on the
     * way: nobody could read their answer. Called with Model's lock held, with a timeout of 0:
     * no other worker takes from the queue meanwhile.
     */
    public static Object pollWithin(LinkedBlockingDeque<Object> queue, long timeout, TimeUnit unit, Map<?, ?> batch) {
        Object job = queue.peekFirst();
        while (job != null && clientLeft(job)) {
            queue.removeFirstOccurrence(job);
            job = queue.peekFirst();
        }
        if (job == null) {
            return null;
        }
        if (!batch.isEmpty()) {
            Filling filling = FILLING.get();
            Object first = batch.values().iterator().next();
            if (filling.first != first || filling.jobs != batch.size()) { // another batch, or not counted yet
                filling.first = first;
                filling.jobs = batch.size();
                filling.bytes = 0;
                for (Object taken : batch.values()) {
                    filling.bytes += bodyBytes(taken);
                }
            }
            long bytes = filling.bytes + bodyBytes(job);
            if (bytes > BATCH_BYTES) {
                return null;
            }
            filling.jobs += 1; // the caller puts the job into the batch
            filling.bytes = bytes;
        }
        queue.removeFirstOccurrence(job);
        return job;
    }

    /** The batch a worker thread is filling, as counted so far: its first job, its jobs, their body bytes. */
    private static final class Filling {
        Object first;
        int jobs;
        long bytes;
    }

    private static final ThreadLocal<Filling> FILLING = ThreadLocal.withInitial(Filling::new);

    /** TorchServe's Job accessors, looked up once (the batching loop calls them for every job). */
    static final class Accessors {
        static final Method IS_OPEN = method("org.pytorch.serve.job.Job", "isOpen");
        static final Method PAYLOAD = method("org.pytorch.serve.job.Job", "getPayload");
        static final Method PARAMETERS = method("org.pytorch.serve.util.messages.RequestInput", "getParameters");
        static final Method VALUE = method("org.pytorch.serve.util.messages.InputParameter", "getValue");
        static final Method NAME = method("org.pytorch.serve.util.messages.InputParameter", "getName");

        static Method method(String type, String name) {
            try {
                return Class.forName(type).getMethod(name);
            } catch (ReflectiveOperationException missing) {
                return null; // another TorchServe: the guards that need it are off (below)
            }
        }
    }

    /** The job's connection is closed (Job.isOpen() is false): its client went away. */
    static boolean clientLeft(Object job) {
        try {
            return Accessors.IS_OPEN != null && !(Boolean) Accessors.IS_OPEN.invoke(job);
        } catch (ReflectiveOperationException | RuntimeException unexpected) {
            return false; // a job that cannot say: computed as before
        }
    }

    /**
     * The bytes of a job's request parameters (its body or form fields, names and values):
     * Job.getPayload().getParameters().
     */
    static long bodyBytes(Object job) {
        if (Accessors.PAYLOAD == null || Accessors.PARAMETERS == null || Accessors.VALUE == null || Accessors.NAME == null) {
            return 0;
        }
        try {
            long bytes = 0;
            for (Object parameter : (List<?>) Accessors.PARAMETERS.invoke(Accessors.PAYLOAD.invoke(job))) {
                bytes += ((byte[]) Accessors.VALUE.invoke(parameter)).length;
                bytes += ((String) Accessors.NAME.invoke(parameter)).length();
            }
            return bytes;
        } catch (ReflectiveOperationException | RuntimeException unexpected) {
            return 0; // a job of another shape (a control command): no body to count
        }
    }

    /**
     * `if (maxDelay <= 0) break;` (LLOAD, LCONST_0, LCMP, IFGT next, GOTO out) becomes a NOP (one
     * instruction keeps the two stack-map frames around it apart): the loop goes on to its next
     * iteration, where it stops when the queue is empty or the batch full.
     */
    static void removeDelayBreak(MethodNode method, int maxDelay) throws UnexpectedBytecode {
        List<AbstractInsnNode> branches = new ArrayList<>();
        for (AbstractInsnNode insn : method.instructions) {
            if (isLoad(insn, maxDelay)
                    && next(insn) != null
                    && next(insn).getOpcode() == Opcodes.LCONST_0
                    && next(next(insn)) != null
                    && next(next(insn)).getOpcode() == Opcodes.LCMP
                    && next(next(next(insn))) instanceof JumpInsnNode stay
                    && stay.getOpcode() == Opcodes.IFGT
                    && next(stay) instanceof JumpInsnNode leave
                    && leave.getOpcode() == Opcodes.GOTO
                    && next(leave) == next(stay.label)) {
                branches.add(insn);
            }
        }
        if (branches.size() != 1) {
            throw new UnexpectedBytecode(
                    METHOD + ": expected one `if (maxDelay <= 0) break;`, found " + branches.size());
        }
        AbstractInsnNode insn = branches.get(0);
        for (int i = 0; i < 4; i++) {
            AbstractInsnNode following = next(insn);
            method.instructions.remove(insn);
            insn = following;
        }
        method.instructions.set(insn, new InsnNode(Opcodes.NOP));
    }

    static boolean isLoad(AbstractInsnNode insn, int local) {
        return insn instanceof VarInsnNode load && load.getOpcode() == Opcodes.LLOAD && load.var == local;
    }

    /** The next real instruction (labels, line numbers and frames skipped). */
    static AbstractInsnNode next(AbstractInsnNode insn) {
        AbstractInsnNode following = insn.getNext();
        while (following != null && following.getOpcode() < 0) {
            following = following.getNext();
        }
        return following;
    }
}
