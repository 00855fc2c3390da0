package cifar10.frontend;

import cifar10.frontend.Agent.UnexpectedBytecode;
import com.google.gson.JsonObject;
import io.netty.buffer.Unpooled;
import io.netty.channel.Channel;
import io.netty.channel.ChannelHandlerContext;
import io.netty.handler.codec.http.DefaultFullHttpResponse;
import io.netty.handler.codec.http.FullHttpRequest;
import io.netty.handler.codec.http.FullHttpResponse;
import io.netty.handler.codec.http.HttpHeaderNames;
import io.netty.handler.codec.http.HttpHeaderValues;
import io.netty.handler.codec.http.HttpResponseStatus;
import io.netty.handler.codec.http.HttpVersion;
import io.netty.handler.codec.http.QueryStringDecoder;
import io.netty.handler.timeout.IdleStateEvent;
import io.netty.handler.timeout.IdleStateHandler;
import io.netty.util.AsciiString;
import java.io.IOException;
import java.lang.reflect.Field;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicInteger;
import org.objectweb.asm.Opcodes;
import org.objectweb.asm.tree.AbstractInsnNode;
import org.objectweb.asm.tree.ClassNode;
import org.objectweb.asm.tree.FieldInsnNode;
import org.objectweb.asm.tree.InsnList;
import org.objectweb.asm.tree.MethodInsnNode;
import org.objectweb.asm.tree.MethodNode;
import org.objectweb.asm.tree.VarInsnNode;
import org.pytorch.serve.http.HttpRequestHandlerChain;
import org.pytorch.serve.http.TokenAuthorizationHandler;
import org.pytorch.serve.util.ConfigManager;
import org.pytorch.serve.util.NettyUtils;
import org.pytorch.serve.util.TokenAuthorization;
import org.pytorch.serve.util.TokenAuthorization.TokenType;

/**
 * What clients meet at TorchServe's door (applied by {@link Agent}):
 *
 * <ul>
 *   <li>Health without a secret: {@code /ping} on the inference port answers without a key (it
 *       tells only whether the server is healthy), and so do the v2 protocol's {@code
 *       /v2/health/live} and {@code /v2/health/ready}; predictions, the v2 protocol's other paths
 *       ({@link OpenInference}) and management still need theirs.
 *   <li>A missing or wrong key is answered 401 with {@code WWW-Authenticate: Bearer} and a JSON
 *       body (TorchServe answers 400), on the inference and the management port.
 *   <li>A body over {@code max_request_size} is answered 413 with a JSON body naming the limit
 *       (Netty's answer has no body).
 *   <li>A body declared {@code application/x-www-form-urlencoded} (what {@code curl --data-binary}
 *       sends) is read as a form only when it can be one, printable ASCII; an image sent that
 *       way is the raw body, as with {@code curl -T} (TorchServe's form decoder fails on it: 500).
 *   <li>A connection with no traffic either way for {@code idle_connection_timeout} seconds
 *       (config.properties; default IDLE_SECONDS) is closed, HTTP/1.0 and keep-alive alike; and
 *       one client address holds at most {@code max_connections_per_address} connections
 *       (default MAX_CONNECTIONS) on each port: one more is closed as soon as it opens.
 * </ul>
 */
public final class FrontDoor {
    static final String TOKEN_HANDLER = "org/pytorch/serve/http/TokenAuthorizationHandler";
    static final String INFERENCE_HANDLER = "org/pytorch/serve/http/api/rest/InferenceRequestHandler";
    static final String AGGREGATOR = "io/netty/handler/codec/http/HttpObjectAggregator";
    static final String INITIALIZER = "org/pytorch/serve/ServerInitializer";
    static final Set<String> HEALTH_PATHS = Set.of("/ping");
    static final int IDLE_SECONDS = 60;
    static final String IDLE_PROPERTY = "idle_connection_timeout";
    static final int MAX_CONNECTIONS = 1024;
    static final String MAX_CONNECTIONS_PROPERTY = "max_connections_per_address";
    /** Open connections per client address (and port listened on). */
    private static final ConcurrentHashMap<String, AtomicInteger> OPEN = new ConcurrentHashMap<>();
    static final String SELF = "cifar10/frontend/FrontDoor";

    private FrontDoor() {}

    // --- the rewrites -------------------------------------------------------------------------

    /** TokenAuthorizationHandler.handleRequest starts with `if (FrontDoor.handleRequest(...)) return;`. */
    static byte[] rewriteTokenHandler(byte[] original) throws UnexpectedBytecode, IOException {
        ClassNode handler = Agent.read(original);
        Agent.field(handler, "tokenType");
        Agent.field(Agent.read(Agent.classBytes("org/pytorch/serve/http/HttpRequestHandlerChain")), "chain");
        MethodNode method = Agent.method(
                handler,
                "handleRequest",
                "(Lio/netty/channel/ChannelHandlerContext;Lio/netty/handler/codec/http/FullHttpRequest;"
                        + "Lio/netty/handler/codec/http/QueryStringDecoder;[Ljava/lang/String;)V");
        VarInsnNode[] arguments = new VarInsnNode[5];
        for (int local = 0; local <= 4; local++) {
            arguments[local] = new VarInsnNode(Opcodes.ALOAD, local);
        }
        Agent.returnFirstIf(
                method,
                SELF,
                "handleRequest",
                "(L" + TOKEN_HANDLER + ";Lio/netty/channel/ChannelHandlerContext;"
                        + "Lio/netty/handler/codec/http/FullHttpRequest;Lio/netty/handler/codec/http/QueryStringDecoder;"
                        + "[Ljava/lang/String;)Z",
                arguments);
        return Agent.write(handler);
    }

    /** InferenceRequestHandler.parseRequest asks FrontDoor.isForm(...) where it compared the content type with the form's. */
    static byte[] rewriteInferenceHandler(byte[] original) throws UnexpectedBytecode {
        ClassNode handler = Agent.read(original);
        MethodNode method = Agent.method(
                handler,
                "parseRequest",
                "(Lio/netty/channel/ChannelHandlerContext;Lio/netty/handler/codec/http/FullHttpRequest;"
                        + "Lio/netty/handler/codec/http/QueryStringDecoder;)Lorg/pytorch/serve/util/messages/RequestInput;");
        List<MethodInsnNode> comparisons = new ArrayList<>();
        for (AbstractInsnNode insn : method.instructions) {
            if (insn instanceof FieldInsnNode form
                    && form.name.equals("APPLICATION_X_WWW_FORM_URLENCODED")
                    && DrainBatching.next(insn) != null
                    && DrainBatching.next(DrainBatching.next(insn)) instanceof MethodInsnNode call
                    && call.name.equals("contentEqualsIgnoreCase")) {
                comparisons.add(call);
            }
        }
        if (comparisons.size() != 1) {
            throw new UnexpectedBytecode("InferenceRequestHandler.parseRequest: expected one comparison with"
                    + " APPLICATION_X_WWW_FORM_URLENCODED, found " + comparisons.size());
        }
        MethodInsnNode comparison = comparisons.get(0);
        method.instructions.insertBefore(comparison, new VarInsnNode(Opcodes.ALOAD, 1)); // the request
        method.instructions.set(
                comparison,
                new MethodInsnNode(
                        Opcodes.INVOKESTATIC,
                        SELF,
                        "isForm",
                        "(Lio/netty/util/AsciiString;Ljava/lang/CharSequence;Lio/netty/handler/codec/http/FullHttpRequest;)Z"));
        method.maxStack += 1;
        return Agent.write(handler);
    }

    /** HttpObjectAggregator's static 413 answers, given a JSON body at the end of its static initializer. */
    static byte[] rewriteAggregator(byte[] original) throws UnexpectedBytecode {
        ClassNode aggregator = Agent.read(original);
        MethodNode init = Agent.method(aggregator, "<clinit>", "()V");
        List<AbstractInsnNode> returns = new ArrayList<>();
        for (AbstractInsnNode insn : init.instructions) {
            if (insn.getOpcode() == Opcodes.RETURN) {
                returns.add(insn);
            }
        }
        if (returns.size() != 1) {
            throw new UnexpectedBytecode(AGGREGATOR + ".<clinit>: expected one return, found " + returns.size());
        }
        String response = "Lio/netty/handler/codec/http/FullHttpResponse;";
        InsnList json = new InsnList();
        for (String name : new String[] {"TOO_LARGE", "TOO_LARGE_CLOSE"}) {
            Agent.field(aggregator, name);
            json.add(new FieldInsnNode(Opcodes.GETSTATIC, AGGREGATOR, name, response));
            json.add(new MethodInsnNode(Opcodes.INVOKESTATIC, SELF, "withJsonBody", "(" + response + ")" + response));
            json.add(new FieldInsnNode(Opcodes.PUTSTATIC, AGGREGATOR, name, response));
        }
        init.instructions.insertBefore(returns.get(0), json);
        init.maxStack = Math.max(init.maxStack, 1);
        return Agent.write(aggregator);
    }

    /** ServerInitializer.initChannel(channel) starts with FrontDoor.initChannel(channel): the idle timeout. */
    static byte[] rewriteInitializer(byte[] original) throws UnexpectedBytecode {
        ClassNode initializer = Agent.read(original);
        Agent.callFirst(
                Agent.method(initializer, "initChannel", "(Lio/netty/channel/Channel;)V"),
                "FrontDoor",
                "(Lio/netty/channel/Channel;)V",
                1);
        return Agent.write(initializer);
    }

    // --- what the rewritten code calls ----------------------------------------------------------

    /** The private fields read here, looked up at the first request (not while the agent starts: see Agent). */
    static final class Fields {
        static final Field CHAIN = accessible(HttpRequestHandlerChain.class, "chain");
        static final Field TOKEN_TYPE = accessible(TokenAuthorizationHandler.class, "tokenType");

        static Field accessible(Class<?> owner, String name) {
            try {
                Field field = owner.getDeclaredField(name);
                field.setAccessible(true);
                return field;
            } catch (NoSuchFieldException missing) { // checked in the class files at start
                throw new IllegalStateException("frontend agent: " + owner.getName() + " has no field " + name);
            }
        }
    }

    /**
     * Answers what needs no further work: /ping on the inference port (passed on past the key
     * check), the v2 protocol's health, a request without the right key (401), and, with the right
     * key, the v2 protocol's other paths ({@link OpenInference}). Returns false to let TorchServe's
     * token check go on as before.
     */
    public static boolean handleRequest(
            TokenAuthorizationHandler handler,
            ChannelHandlerContext ctx,
            FullHttpRequest request,
            QueryStringDecoder decoder,
            String[] segments)
            throws Exception {
        TokenType type = (TokenType) Fields.TOKEN_TYPE.get(handler);
        boolean inference = type == TokenType.INFERENCE;
        HttpRequestHandlerChain next = (HttpRequestHandlerChain) Fields.CHAIN.get(handler);
        if (inference) {
            request.headers().remove(OpenInference.PROTOCOL_HEADER); // only the v2 routes set it
            if (OpenInference.isHealth(decoder.path())) {
                OpenInference.answerHealth(ctx, decoder.path());
                return true;
            }
        }
        if (!Boolean.TRUE.equals(TokenAuthorization.isEnabled())) {
            return inference && OpenInference.handle(ctx, request, decoder, next);
        }
        if (inference && HEALTH_PATHS.contains(decoder.path())) {
            next.handleRequest(ctx, request, decoder, segments);
            return true;
        }
        // as TorchServe's handler decides it: a management request naming /token asks for the API key
        TokenType needed = type == TokenType.MANAGEMENT && request.toString().contains("/token") ? TokenType.TOKEN_API : type;
        String header = request.headers().get(HttpHeaderNames.AUTHORIZATION);
        if (header != null
                && TokenAuthorization.checkTokenAuthorization(
                        TokenAuthorization.parseTokenFromBearerTokenHeader(header), needed)) {
            return inference && OpenInference.handle(ctx, request, decoder, next);
        }
        String key = needed == TokenType.TOKEN_API ? "API" : needed.name().toLowerCase();
        FullHttpResponse refusal = jsonResponse(
                HttpResponseStatus.UNAUTHORIZED,
                "InvalidKeyException",
                "Token Authorization failed: send the " + key + " key as 'Authorization: Bearer KEY'"
                        + " (keys are in key_file.json; expired ones are refused)");
        refusal.headers().set(HttpHeaderNames.WWW_AUTHENTICATE, "Bearer");
        NettyUtils.sendHttpResponse(ctx, refusal, true);
        return true;
    }

    /** The form comparison of parseRequest, true only for a body that can be a urlencoded form (never a v2 request). */
    public static boolean isForm(AsciiString formType, CharSequence contentType, FullHttpRequest request) {
        if (!formType.contentEqualsIgnoreCase(contentType) || request.headers().contains(OpenInference.PROTOCOL_HEADER)) {
            return false;
        }
        return request.content().forEachByte(b -> b >= 0x20 && b < 0x7f || b == '\r' || b == '\n' || b == '\t') == -1;
    }

    /** `response` (Netty's 413) with a JSON body that names the limit. */
    public static FullHttpResponse withJsonBody(FullHttpResponse response) {
        int limit = ConfigManager.getInstance().getMaxRequestSize();
        FullHttpResponse json = jsonResponse(
                response.status(),
                "RequestTooLarge",
                "the request is larger than the limit of " + limit + " bytes (max_request_size): the model sees"
                        + " 32 x 32 pixels, send a smaller image");
        response.headers().forEach(header -> json.headers().set(header.getKey(), header.getValue()));
        json.headers().set(HttpHeaderNames.CONTENT_TYPE, HttpHeaderValues.APPLICATION_JSON);
        json.headers().set(HttpHeaderNames.CONTENT_LENGTH, json.content().readableBytes());
        return json.replace(Unpooled.unreleasableBuffer(json.content())); // shared by every connection
    }

    /** Closes a connection over its address's limit; adds the idle timeout first in the others' pipeline. */
    public static void initChannel(Channel channel) {
        String client = channel.remoteAddress() instanceof InetSocketAddress remote
                ? remote.getAddress().getHostAddress() + " " + channel.localAddress()
                : String.valueOf(channel.remoteAddress());
        AtomicInteger open = OPEN.computeIfAbsent(client, key -> new AtomicInteger());
        int count = open.incrementAndGet();
        channel.closeFuture().addListener(closed -> {
            if (open.decrementAndGet() == 0) {
                OPEN.remove(client, open);
            }
        });
        if (count > setting(MAX_CONNECTIONS_PROPERTY, MAX_CONNECTIONS)) {
            channel.close();
            return;
        }
        channel.pipeline().addFirst("idle-timeout", new CloseWhenIdle(setting(IDLE_PROPERTY, IDLE_SECONDS)));
    }

    static int setting(String name, int otherwise) {
        return Integer.parseInt(ConfigManager.getInstance().getProperty(name, String.valueOf(otherwise)));
    }

    /** Closes a connection with no read or write for `seconds`, quietly (no exception, no log line). */
    static final class CloseWhenIdle extends IdleStateHandler {
        CloseWhenIdle(int seconds) {
            super(0, 0, seconds);
        }

        @Override
        protected void channelIdle(ChannelHandlerContext ctx, IdleStateEvent event) {
            ctx.close();
        }
    }

    static FullHttpResponse jsonResponse(HttpResponseStatus status, String type, String message) {
        JsonObject body = new JsonObject();
        body.addProperty("code", status.code());
        body.addProperty("type", type);
        body.addProperty("message", message);
        byte[] bytes = (body + "\n").getBytes(StandardCharsets.UTF_8);
        FullHttpResponse response = new DefaultFullHttpResponse(HttpVersion.HTTP_1_1, status, Unpooled.wrappedBuffer(bytes));
        response.headers().set(HttpHeaderNames.CONTENT_TYPE, HttpHeaderValues.APPLICATION_JSON);
        return response;
    }
}
