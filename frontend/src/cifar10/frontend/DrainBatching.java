package cifar10.frontend;

import java.io.IOException;
import java.io.InputStream;
import java.lang.instrument.ClassFileTransformer;
import java.lang.instrument.Instrumentation;
import java.security.ProtectionDomain;
import java.util.ArrayList;
import java.util.List;
import org.objectweb.asm.ClassReader;
import org.objectweb.asm.ClassWriter;
import org.objectweb.asm.Opcodes;
import org.objectweb.asm.tree.AbstractInsnNode;
import org.objectweb.asm.tree.ClassNode;
import org.objectweb.asm.tree.FieldInsnNode;
import org.objectweb.asm.tree.InsnNode;
import org.objectweb.asm.tree.JumpInsnNode;
import org.objectweb.asm.tree.MethodInsnNode;
import org.objectweb.asm.tree.MethodNode;
import org.objectweb.asm.tree.VarInsnNode;

/**
 * The drain-the-queue batching policy for TorchServe 0.12's frontend, as a Java agent.
 *
 * <p>TorchServe's {@code Model.pollBatch} blocks for a worker's first job, then polls the queue
 * with what is left of {@code maxBatchDelay} and stops once that delay is used up: a lone request
 * always waits the whole delay, and a delay of 0 caps every batch at two requests. This agent
 * rewrites two instructions of that method when the class loads: the loop polls with a timeout of
 * 0 (it takes a job only if one is already queued) and the break on the used-up delay is removed.
 * A worker then never waits for a request that has not arrived, and takes everything already
 * queued, up to {@code batchSize}. {@code maxBatchDelay} is no longer read by that loop.
 *
 * <p>If the method is not the bytecode this was written against, the JVM stops before TorchServe
 * starts, saying why: a TorchServe that silently batches differently is worse than none.
 */
public final class DrainBatching implements ClassFileTransformer {
    static final String MODEL = "org/pytorch/serve/wlm/Model";
    static final String METHOD = "pollBatch";
    static final String DESCRIPTOR = "(Ljava/lang/String;JLjava/util/Map;)V";
    static final String QUEUE = "java/util/concurrent/LinkedBlockingDeque";
    static final String POLL = "(JLjava/util/concurrent/TimeUnit;)Ljava/lang/Object;";
    static final String OFF =
            "To run TorchServe's own batching instead, remove -javaagent from vmargs in config.properties.";

    /** The bytecode is not what this policy was written against. */
    static final class UnexpectedBytecode extends Exception {
        UnexpectedBytecode(String message) {
            super(message);
        }
    }

    public static void premain(String arguments, Instrumentation instrumentation) {
        try {
            rewrite(modelClassBytes()); // checked before TorchServe starts, not when a model loads
        } catch (UnexpectedBytecode | IOException error) {
            System.err.println(
                    "drain-batching agent: cannot apply the drain-the-queue batching policy: "
                            + error.getMessage()
                            + ". TorchServe was not started. "
                            + OFF);
            System.exit(78);
        }
        instrumentation.addTransformer(new DrainBatching());
        System.err.println(
                "drain-batching agent: " + MODEL.replace('/', '.') + "." + METHOD
                        + " takes what is queued and never waits for more (maxBatchDelay unused)");
    }

    @Override
    public byte[] transform(
            ClassLoader loader, String name, Class<?> redefined, ProtectionDomain domain, byte[] bytes) {
        if (!MODEL.equals(name)) {
            return null;
        }
        try {
            return rewrite(bytes);
        } catch (UnexpectedBytecode error) { // another Model class than the one checked at start
            System.err.println("drain-batching agent: " + error.getMessage() + ". Stopping. " + OFF);
            Runtime.getRuntime().halt(78);
            return null;
        }
    }

    static byte[] modelClassBytes() throws IOException, UnexpectedBytecode {
        try (InputStream in = ClassLoader.getSystemResourceAsStream(MODEL + ".class")) {
            if (in == null) {
                throw new UnexpectedBytecode(MODEL + ".class is not on the class path (is this TorchServe?)");
            }
            return in.readAllBytes();
        }
    }

    /** Model's class file with pollBatch's loop rewritten; throws if any step does not match. */
    static byte[] rewrite(byte[] original) throws UnexpectedBytecode {
        ClassNode model = new ClassNode();
        new ClassReader(original).accept(model, 0);
        MethodNode poll = null;
        for (MethodNode method : model.methods) {
            if (METHOD.equals(method.name) && DESCRIPTOR.equals(method.desc)) {
                poll = method;
            }
        }
        if (poll == null) {
            throw new UnexpectedBytecode(MODEL + " has no " + METHOD + DESCRIPTOR);
        }
        int maxDelay = maxDelayLocal(poll);
        pollWithoutWaiting(poll, maxDelay);
        removeDelayBreak(poll, maxDelay);
        ClassWriter writer = new ClassWriter(0); // same frames and stack depth: nothing to compute
        model.accept(writer);
        return writer.toByteArray();
    }

    /** The local that `long maxDelay = maxBatchDelay;` stores into: GETFIELD maxBatchDelay, I2L, LSTORE. */
    static int maxDelayLocal(MethodNode method) throws UnexpectedBytecode {
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

    /** `jobsQueue.poll(maxDelay, MILLISECONDS)` becomes `jobsQueue.poll(0, MILLISECONDS)`. */
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
        method.instructions.set(loads.get(0), new InsnNode(Opcodes.LCONST_0));
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
