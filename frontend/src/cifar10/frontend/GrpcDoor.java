package cifar10.frontend;

import cifar10.frontend.Agent.UnexpectedBytecode;
import io.grpc.Metadata;
import io.grpc.ServerBuilder;
import io.grpc.ServerCall;
import io.grpc.ServerCallHandler;
import io.grpc.ServerInterceptors;
import io.grpc.Status;
import io.grpc.stub.ServerCallStreamObserver;
import java.lang.reflect.Field;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Set;
import org.objectweb.asm.Opcodes;
import org.objectweb.asm.tree.AbstractInsnNode;
import org.objectweb.asm.tree.ClassNode;
import org.objectweb.asm.tree.FieldInsnNode;
import org.objectweb.asm.tree.FrameNode;
import org.objectweb.asm.tree.InsnList;
import org.objectweb.asm.tree.InsnNode;
import org.objectweb.asm.tree.JumpInsnNode;
import org.objectweb.asm.tree.LabelNode;
import org.objectweb.asm.tree.MethodInsnNode;
import org.objectweb.asm.tree.MethodNode;
import org.objectweb.asm.tree.VarInsnNode;
import org.pytorch.serve.grpcimpl.GRPCInterceptor;
import org.pytorch.serve.job.GRPCJob;
import org.pytorch.serve.util.ConnectorType;
import org.pytorch.serve.util.GRPCUtils;
import org.pytorch.serve.util.TokenAuthorization;
import org.pytorch.serve.util.TokenAuthorization.TokenType;
import org.pytorch.serve.util.messages.WorkerCommands;

/**
 * What gRPC clients meet (applied by {@link Agent}), as {@link FrontDoor} does for REST:
 *
 * <ul>
 *   <li>The key check (GRPCInterceptor.interceptCall): a missing or wrong key is refused with
 *       UNAUTHENTICATED naming the key wanted (TorchServe answers PERMISSION_DENIED); {@code Ping}
 *       and the v2 protocol's {@code ServerLive} and {@code ServerReady} need no key, as {@code /ping}.
 *   <li>A request the handler refused (GRPCJob.response with a status of 300 or more) fails with
 *       the gRPC status of that HTTP status and the handler's JSON body as its message (TorchServe
 *       answers OK with the error as the prediction); a 503's {@code Retry-After} is a trailer.
 *   <li>GRPCJob.isOpen says whether the client is still there (TorchServe's says the opposite, so
 *       the agent's batching would drop every gRPC request as abandoned).
 *   <li>The inference port's gRPC server also serves the v2 protocol as Triton's and KServe's
 *       clients call it ({@link OpenInferenceGrpcService}; ModelServer.startGRPCServer).
 * </ul>
 */
public final class GrpcDoor {
    static final String INTERCEPTOR = "org/pytorch/serve/grpcimpl/GRPCInterceptor";
    static final String JOB = "org/pytorch/serve/job/GRPCJob";
    static final String SERVER = "org/pytorch/serve/ModelServer";
    static final String SELF = "cifar10/frontend/GrpcDoor";
    static final Set<String> HEALTH_METHODS = Set.of(
            "org.pytorch.serve.grpc.inference.InferenceAPIsService/Ping",
            OpenInferenceGrpcService.SERVICE + "/ServerLive",
            OpenInferenceGrpcService.SERVICE + "/ServerReady");
    static final Metadata.Key<String> AUTHORIZATION = Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);
    static final Metadata.Key<String> RETRY_AFTER = Metadata.Key.of("retry-after", Metadata.ASCII_STRING_MARSHALLER);

    private GrpcDoor() {}

    // --- the rewrites -------------------------------------------------------------------------

    /** GRPCInterceptor.interceptCall starts with `listener = GrpcDoor.interceptCall(...); if (listener != null) return listener;`. */
    static byte[] rewriteInterceptor(byte[] original) throws UnexpectedBytecode {
        ClassNode interceptor = Agent.read(original);
        Agent.field(interceptor, "tokenType");
        MethodNode method = Agent.method(
                interceptor,
                "interceptCall",
                "(Lio/grpc/ServerCall;Lio/grpc/Metadata;Lio/grpc/ServerCallHandler;)Lio/grpc/ServerCall$Listener;");
        String listener = "io/grpc/ServerCall$Listener";
        LabelNode asBefore = new LabelNode();
        InsnList door = new InsnList();
        for (int local = 0; local <= 3; local++) {
            door.add(new VarInsnNode(Opcodes.ALOAD, local));
        }
        door.add(new MethodInsnNode(
                Opcodes.INVOKESTATIC,
                SELF,
                "interceptCall",
                "(L" + INTERCEPTOR + ";Lio/grpc/ServerCall;Lio/grpc/Metadata;Lio/grpc/ServerCallHandler;)L" + listener + ";"));
        door.add(new InsnNode(Opcodes.DUP));
        door.add(new JumpInsnNode(Opcodes.IFNULL, asBefore));
        door.add(new InsnNode(Opcodes.ARETURN));
        door.add(asBefore);
        door.add(new FrameNode(Opcodes.F_SAME1, 0, null, 1, new Object[] {listener}));
        door.add(new InsnNode(Opcodes.POP));
        method.instructions.insert(door);
        method.maxStack = Math.max(method.maxStack, 5);
        return Agent.write(interceptor);
    }

    /**
     * GRPCJob.response starts with `if (GrpcDoor.refused(this, body, status, headers)) return;`, and
     * GRPCJob.isOpen, which was `return predictionResponseObserver.isCancelled()`, is `return GrpcDoor.isOpen(this)`.
     */
    static byte[] rewriteJob(byte[] original) throws UnexpectedBytecode {
        ClassNode job = Agent.read(original);
        for (String name : new String[] {"predictionResponseObserver", "modelInferResponseObserver"}) {
            Agent.field(job, name);
        }
        MethodNode isOpen = Agent.method(job, "isOpen", "()Z");
        List<AbstractInsnNode> code = new ArrayList<>();
        for (AbstractInsnNode insn : isOpen.instructions) {
            if (insn.getOpcode() >= 0) { // not a label, line number or frame
                code.add(insn);
            }
        }
        if (code.size() != 5
                || code.get(0).getOpcode() != Opcodes.ALOAD
                || !(code.get(1) instanceof FieldInsnNode field && field.name.equals("predictionResponseObserver"))
                || code.get(2).getOpcode() != Opcodes.CHECKCAST
                || !(code.get(3) instanceof MethodInsnNode call && call.name.equals("isCancelled"))
                || code.get(4).getOpcode() != Opcodes.IRETURN) {
            throw new UnexpectedBytecode(JOB + ".isOpen is not `return predictionResponseObserver.isCancelled()`");
        }
        isOpen.instructions.clear();
        isOpen.tryCatchBlocks.clear();
        isOpen.localVariables = null;
        isOpen.instructions.add(new VarInsnNode(Opcodes.ALOAD, 0));
        isOpen.instructions.add(new MethodInsnNode(Opcodes.INVOKESTATIC, SELF, "isOpen", "(L" + JOB + ";)Z"));
        isOpen.instructions.add(new InsnNode(Opcodes.IRETURN));

        MethodNode response = Agent.method(
                job, "response", "([BLjava/lang/CharSequence;ILjava/lang/String;Ljava/util/Map;)V");
        Agent.returnFirstIf(
                response,
                SELF,
                "refused",
                "(L" + JOB + ";[BILjava/util/Map;)Z",
                new VarInsnNode(Opcodes.ALOAD, 0),
                new VarInsnNode(Opcodes.ALOAD, 1),
                new VarInsnNode(Opcodes.ILOAD, 3),
                new VarInsnNode(Opcodes.ALOAD, 5));
        return Agent.write(job);
    }

    /** ModelServer.startGRPCServer calls GrpcDoor.addServices(builder, connectorType) just before builder.build(). */
    static byte[] rewriteServer(byte[] original) throws UnexpectedBytecode {
        ClassNode server = Agent.read(original);
        MethodNode method = Agent.method(
                server, "startGRPCServer", "(Lorg/pytorch/serve/util/ConnectorType;)Lio/grpc/Server;");
        List<AbstractInsnNode> builds = new ArrayList<>();
        for (AbstractInsnNode insn : method.instructions) {
            if (insn instanceof MethodInsnNode call && call.owner.equals("io/grpc/ServerBuilder") && call.name.equals("build")) {
                builds.add(insn);
            }
        }
        if (builds.size() != 1) {
            throw new UnexpectedBytecode(SERVER + ".startGRPCServer: expected one ServerBuilder.build(), found " + builds.size());
        }
        InsnList add = new InsnList();
        add.add(new InsnNode(Opcodes.DUP));
        add.add(new VarInsnNode(Opcodes.ALOAD, 1));
        add.add(new MethodInsnNode(
                Opcodes.INVOKESTATIC, SELF, "addServices", "(Lio/grpc/ServerBuilder;Lorg/pytorch/serve/util/ConnectorType;)V"));
        method.instructions.insertBefore(builds.get(0), add);
        method.maxStack += 2;
        return Agent.write(server);
    }

    // --- what the rewritten code calls ----------------------------------------------------------

    /** The private fields read here, looked up at the first call (not while the agent starts: see Agent). */
    private static final class Fields {
        static final Field TOKEN_TYPE = FrontDoor.Fields.accessible(GRPCInterceptor.class, "tokenType");
        static final Field PREDICTION = FrontDoor.Fields.accessible(GRPCJob.class, "predictionResponseObserver");
        static final Field INFER = FrontDoor.Fields.accessible(GRPCJob.class, "modelInferResponseObserver");
    }

    /**
     * A call let through without a key (health) or refused (no key, or a wrong one); null for a call
     * with the right key, which TorchServe's interceptor then handles as before.
     */
    public static <ReqT, RespT> ServerCall.Listener<ReqT> interceptCall(
            GRPCInterceptor interceptor, ServerCall<ReqT, RespT> call, Metadata headers, ServerCallHandler<ReqT, RespT> next)
            throws IllegalAccessException {
        if (HEALTH_METHODS.contains(call.getMethodDescriptor().getFullMethodName())) {
            return next.startCall(call, headers);
        }
        if (!Boolean.TRUE.equals(TokenAuthorization.isEnabled())) {
            return null;
        }
        TokenType type = (TokenType) Fields.TOKEN_TYPE.get(interceptor);
        String header = headers.get(AUTHORIZATION);
        if (header != null
                && TokenAuthorization.checkTokenAuthorization(TokenAuthorization.parseTokenFromBearerTokenHeader(header), type)) {
            return null;
        }
        call.close(
                Status.UNAUTHENTICATED.withDescription(
                        "Token Authorization failed: send the " + type.name().toLowerCase()
                                + " key as the metadata 'authorization: Bearer KEY' (keys are in key_file.json; expired"
                                + " ones are refused)"),
                new Metadata());
        return new ServerCall.Listener<ReqT>() {};
    }

    /** Whether the job's client still waits for its answer. */
    public static boolean isOpen(GRPCJob job) throws IllegalAccessException {
        Object observer = Fields.PREDICTION.get(job);
        if (observer == null) {
            observer = Fields.INFER.get(job);
        }
        return !(observer instanceof ServerCallStreamObserver<?> call) || !call.isCancelled();
    }

    /**
     * A Predictions or StreamPredictions answer with a status of 300 or more sent as the gRPC error
     * it is (true); false for everything else, which TorchServe answers as before.
     */
    public static boolean refused(GRPCJob job, byte[] body, int status, Map<String, String> headers)
            throws IllegalAccessException {
        WorkerCommands command = job.getCmd();
        if (status < 300 || (command != WorkerCommands.PREDICT && command != WorkerCommands.STREAMPREDICT)) {
            return false;
        }
        ServerCallStreamObserver<?> observer = (ServerCallStreamObserver<?>) Fields.PREDICTION.get(job);
        if (!observer.isCancelled()) {
            observer.onError(error(status, new String(body, StandardCharsets.UTF_8), headers));
        }
        return true;
    }

    /** The gRPC error of an HTTP status (GRPCUtils' mapping), with `message` and a Retry-After header as a trailer. */
    static RuntimeException error(int status, String message, Map<String, String> headers) {
        Metadata trailers = new Metadata();
        String retryAfter = headers == null ? null : headers.get("Retry-After");
        if (retryAfter != null) {
            trailers.put(RETRY_AFTER, retryAfter);
        }
        return GRPCUtils.getGRPCStatusCode(status).withDescription(message).asRuntimeException(trailers);
    }

    /** The v2 protocol beside TorchServe's own services on the inference port, behind the same key check. */
    public static void addServices(ServerBuilder<?> builder, ConnectorType connector) {
        if (connector == ConnectorType.INFERENCE_CONNECTOR) {
            builder.addService(ServerInterceptors.intercept(OpenInferenceGrpcService.service(), new GRPCInterceptor(connector)));
        }
    }
}
