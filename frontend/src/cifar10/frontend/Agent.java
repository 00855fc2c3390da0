package cifar10.frontend;

import java.io.IOException;
import java.io.InputStream;
import java.lang.instrument.ClassFileTransformer;
import java.lang.instrument.Instrumentation;
import java.security.ProtectionDomain;
import java.util.Map;
import org.objectweb.asm.ClassReader;
import org.objectweb.asm.ClassWriter;
import org.objectweb.asm.Opcodes;
import org.objectweb.asm.tree.ClassNode;
import org.objectweb.asm.tree.FrameNode;
import org.objectweb.asm.tree.InsnList;
import org.objectweb.asm.tree.InsnNode;
import org.objectweb.asm.tree.JumpInsnNode;
import org.objectweb.asm.tree.LabelNode;
import org.objectweb.asm.tree.MethodInsnNode;
import org.objectweb.asm.tree.MethodNode;
import org.objectweb.asm.tree.VarInsnNode;

/**
 * What we change in TorchServe 0.12's frontend, as a Java agent that rewrites classes when they
 * load: {@link DrainBatching} (Model: a worker takes what is queued and never waits for more),
 * {@link ScaleDownDrain} (WorkerThread: a worker removed by a scale-down answers its batch first),
 * {@link ArchiveNamesOnly} (ModelArchive: a model is registered only by the name of an archive in
 * the model store), {@link FormLimits} (RequestInput: a request carries a bounded number of
 * parameters), {@link KeyRotation} (the token API replaces the API key too) and {@link FrontDoor}
 * (what clients meet at the door: health without a key, 401, a JSON 413, images posted as forms,
 * idle connections, the Open Inference Protocol v2: {@link OpenInference}), {@link GrpcDoor} (the same
 * for gRPC: the key check, refusals as gRPC errors, the v2 protocol's gRPC service) and
 * {@link RequestDuration} (NettyUtils: a histogram of what a client waits). It also adds
 * {@link Workers} (a gauge of each model version's READY workers) to /metrics.
 *
 * <p>Every rewrite are tried on TorchServe's own class files before it starts. If a class is not
 * the bytecode they were written against, the JVM stops, saying why: a TorchServe that silently
 * behaves differently is worse than none.
 */
public final class Agent implements ClassFileTransformer {
    static final String OFF =
            "To run TorchServe without these changes, remove -javaagent from vmargs in config.properties.";

    /** A class's bytes, rewritten: the class name (with slashes) maps to its rewrite. */
    interface Rewrite {
        byte[] apply(byte[] original) throws UnexpectedBytecode, IOException;
    }

    static final Map<String, Rewrite> REWRITES = Map.ofEntries(
            Map.entry(DrainBatching.MODEL, DrainBatching::rewrite),
            Map.entry(ScaleDownDrain.WORKER, ScaleDownDrain::rewrite),
            Map.entry(ArchiveNamesOnly.MODEL_ARCHIVE, ArchiveNamesOnly::rewrite),
            Map.entry(FormLimits.REQUEST_INPUT, FormLimits::rewrite),
            Map.entry(KeyRotation.TOKENS, KeyRotation::rewriteTokens),
            Map.entry(FrontDoor.TOKEN_HANDLER, bytes -> FrontDoor.rewriteTokenHandler(KeyRotation.rewriteHandler(bytes))),
            Map.entry(FrontDoor.INFERENCE_HANDLER, FrontDoor::rewriteInferenceHandler),
            Map.entry(FrontDoor.AGGREGATOR, FrontDoor::rewriteAggregator),
            Map.entry(FrontDoor.INITIALIZER, FrontDoor::rewriteInitializer),
            Map.entry(RequestDuration.NETTY_UTILS, RequestDuration::rewrite),
            Map.entry(GrpcDoor.INTERCEPTOR, GrpcDoor::rewriteInterceptor),
            Map.entry(GrpcDoor.JOB, GrpcDoor::rewriteJob),
            Map.entry(GrpcDoor.SERVER, GrpcDoor::rewriteServer));

    /** The bytecode is not what a rewrite was written against. */
    static final class UnexpectedBytecode extends Exception {
        UnexpectedBytecode(String message) {
            super(message);
        }
    }

    public static void premain(String arguments, Instrumentation instrumentation) {
        try {
            for (Map.Entry<String, Rewrite> rewrite : REWRITES.entrySet()) {
                rewrite.getValue().apply(classBytes(rewrite.getKey())); // checked now, not when a model loads
            }
        } catch (UnexpectedBytecode | IOException error) {
            System.err.println(
                    "frontend agent: cannot change TorchServe's frontend: "
                            + error.getMessage()
                            + ". TorchServe was not started. "
                            + OFF);
            System.exit(78);
        }
        instrumentation.addTransformer(new Agent());
        new Workers().register();
        System.err.println(
                "frontend agent: Model.pollBatch takes what is queued and never waits for more (maxBatchDelay"
                        + " unused); WorkerThread.shutdown lets a scaled-down worker answer its batch first;"
                        + " models are registered only by archive name; at most "
                        + FormLimits.MAX_PARAMETERS
                        + " parameters a request; /token?type=api replaces every key; /ping needs no key, a refused"
                        + " key is 401, an oversize body 413 JSON, an image posted as a form is the raw body, idle"
                        + " connections are closed; the v2 protocol on /v2; gRPC: a refused key is UNAUTHENTICATED,"
                        + " a refused request its error, the v2 protocol as inference.GRPCInferenceService;"
                        + " cifar10_request_duration_seconds and cifar10_workers on /metrics");
    }

    @Override
    public byte[] transform(
            ClassLoader loader, String name, Class<?> redefined, ProtectionDomain domain, byte[] bytes) {
        Rewrite rewrite = REWRITES.get(name);
        if (rewrite == null) {
            return null;
        }
        try {
            return rewrite.apply(bytes);
        } catch (UnexpectedBytecode | IOException error) { // another class of that name than the one checked at start
            System.err.println("frontend agent: " + error.getMessage() + ". Stopping. " + OFF);
            Runtime.getRuntime().halt(78);
            return null;
        }
    }

    static byte[] classBytes(String name) throws IOException, UnexpectedBytecode {
        try (InputStream in = ClassLoader.getSystemResourceAsStream(name + ".class")) {
            if (in == null) {
                throw new UnexpectedBytecode(name + ".class is not on the class path (is this TorchServe?)");
            }
            return in.readAllBytes();
        }
    }

    static ClassNode read(byte[] bytes) {
        ClassNode type = new ClassNode();
        new ClassReader(bytes).accept(type, 0);
        return type;
    }

    static MethodNode method(ClassNode type, String name, String descriptor) throws UnexpectedBytecode {
        for (MethodNode method : type.methods) {
            if (name.equals(method.name) && descriptor.equals(method.desc)) {
                return method;
            }
        }
        throw new UnexpectedBytecode(type.name + " has no " + name + descriptor);
    }

    /** Throws unless the class declares a field of that name. */
    static void field(ClassNode type, String name) throws UnexpectedBytecode {
        if (type.fields.stream().noneMatch(field -> field.name.equals(name))) {
            throw new UnexpectedBytecode(type.name + " has no field " + name);
        }
    }

    /**
     * `target(arguments...)` inserted as the method's first instruction: a static call of ours with the
     * method's own arguments (their local slots), which may throw to refuse the call.
     */
    static void callFirst(MethodNode method, String target, String descriptor, int... locals)
            throws UnexpectedBytecode {
        if (method.maxStack < locals.length) {
            throw new UnexpectedBytecode(method.name + " has no operand stack for " + locals.length + " arguments");
        }
        InsnList call = new InsnList();
        for (int local : locals) {
            call.add(new VarInsnNode(Opcodes.ALOAD, local));
        }
        call.add(new MethodInsnNode(Opcodes.INVOKESTATIC, "cifar10/frontend/" + target, method.name, descriptor));
        method.instructions.insert(call);
    }

    /**
     * `if (owner.name(arguments...)) return;` put first in a void method: a static method of ours that
     * answers (true) or leaves the method to go on as before (false). `loads` push the arguments.
     */
    static void returnFirstIf(MethodNode method, String owner, String name, String descriptor, VarInsnNode... loads) {
        LabelNode asBefore = new LabelNode();
        InsnList prologue = new InsnList();
        for (VarInsnNode load : loads) {
            prologue.add(load);
        }
        prologue.add(new MethodInsnNode(Opcodes.INVOKESTATIC, owner, name, descriptor));
        prologue.add(new JumpInsnNode(Opcodes.IFEQ, asBefore));
        prologue.add(new InsnNode(Opcodes.RETURN));
        prologue.add(asBefore);
        prologue.add(new FrameNode(Opcodes.F_SAME, 0, null, 0, null));
        method.instructions.insert(prologue);
        method.maxStack = Math.max(method.maxStack, loads.length);
    }

    /** The method's body replaced by `return target(arguments...)`: a static method of ours that returns an object. */
    static void replaceBody(MethodNode method, String target, String descriptor, int... locals) {
        method.instructions.clear();
        method.tryCatchBlocks.clear();
        method.localVariables = null;
        for (int local : locals) {
            method.instructions.add(new VarInsnNode(Opcodes.ALOAD, local));
        }
        method.instructions.add(new MethodInsnNode(Opcodes.INVOKESTATIC, "cifar10/frontend/" + target, method.name, descriptor));
        method.instructions.add(new InsnNode(Opcodes.ARETURN));
        method.maxStack = Math.max(1, locals.length);
    }

    /** The class written back with the frames and stack depths it was read with (the rewrites keep both). */
    static byte[] write(ClassNode type) {
        ClassWriter writer = new ClassWriter(0);
        type.accept(writer);
        return writer.toByteArray();
    }
}
