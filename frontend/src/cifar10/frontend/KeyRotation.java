package cifar10.frontend;

import cifar10.frontend.Agent.UnexpectedBytecode;
import java.io.IOException;
import java.lang.reflect.Field;
import java.lang.reflect.Method;
import java.net.URLDecoder;
import java.nio.charset.StandardCharsets;
import org.objectweb.asm.tree.ClassNode;

/**
 * The token API replaces the API key too (applied by {@link Agent}).
 *
 * <p>TorchServe's {@code POST /token?type=inference|management}, called with the API key, makes a
 * new inference or management key; nothing replaces the API key itself, the key that makes the
 * others, until a restart: a leaked API key could not be revoked. Two method bodies are replaced:
 * {@code TokenAuthorizationHandler.parseQuery} also knows {@code type=api}, and
 * {@code TokenAuthorization.updateKeyFile} answers it by making a new API key, inference key and
 * management key at once (written to key_file.json, 0600, as TorchServe writes it). The old keys
 * stop working at that moment.
 */
public final class KeyRotation {
    static final String HANDLER = "org/pytorch/serve/http/TokenAuthorizationHandler";
    static final String TOKENS = "org/pytorch/serve/util/TokenAuthorization";
    static final String TOKEN_TYPE = "Lorg/pytorch/serve/util/TokenAuthorization$TokenType;";
    static final String TOKEN_API = "TOKEN_API"; // TorchServe's name of the API key's type

    private KeyRotation() {}

    /** TokenAuthorizationHandler's class file with parseQuery(request) answered by ours. */
    static byte[] rewriteHandler(byte[] original) throws UnexpectedBytecode {
        ClassNode handler = Agent.read(original);
        Agent.replaceBody(
                Agent.method(handler, "parseQuery", "(Lio/netty/handler/codec/http/FullHttpRequest;)Ljava/lang/String;"),
                "KeyRotation",
                "(Ljava/lang/Object;)Ljava/lang/String;",
                1);
        return Agent.write(handler);
    }

    /** TokenAuthorization's class file with updateKeyFile(type) answered by ours. */
    static byte[] rewriteTokens(byte[] original) throws UnexpectedBytecode {
        ClassNode tokens = Agent.read(original);
        Agent.method(tokens, "generateKey", "()Ljava/lang/String;");
        Agent.method(tokens, "generateKeyFile", "(" + TOKEN_TYPE + ")Z");
        Agent.field(tokens, "apiKey");
        Agent.replaceBody(
                Agent.method(tokens, "updateKeyFile", "(" + TOKEN_TYPE + ")Ljava/lang/String;"),
                "KeyRotation",
                "(Ljava/lang/Object;)Ljava/lang/String;",
                0);
        return Agent.write(tokens);
    }

    /**
     * The key type a token request asks for, as TorchServe's handler upper-cases it into a TokenType:
     * "inference", "management", "token_api" (for type=api), or a word that is no type.
     */
    public static String parseQuery(Object request) throws ReflectiveOperationException {
        // through Netty's public interface: the request's own class is not public
        String uri = (String) Class.forName("io.netty.handler.codec.http.HttpRequest").getMethod("uri").invoke(request);
        int query = uri.indexOf('?');
        if (query < 0) {
            return "NO TYPE PROVIDED";
        }
        for (String pair : uri.substring(query + 1).split("&")) {
            if (pair.startsWith("type=")) {
                String type = URLDecoder.decode(pair.substring("type=".length()), StandardCharsets.UTF_8);
                switch (type) {
                    case "inference":
                    case "management":
                        return type;
                    case "api":
                        return TOKEN_API.toLowerCase();
                    default:
                        return "WRONG TYPE";
                }
            }
        }
        return "NO TYPE PROVIDED";
    }

    /** Makes the new key(s) of `type` and writes key_file.json; TOKEN_API replaces all three keys. */
    public static String updateKeyFile(Object type) throws IOException, ReflectiveOperationException {
        Class<?> tokens = Class.forName(TOKENS.replace('/', '.'));
        if (TOKEN_API.equals(((Enum<?>) type).name())) {
            Method generateKey = tokens.getDeclaredMethod("generateKey");
            generateKey.setAccessible(true);
            Field apiKey = tokens.getDeclaredField("apiKey");
            apiKey.setAccessible(true);
            apiKey.set(null, generateKey.invoke(null));
        }
        Method write = tokens.getDeclaredMethod("generateKeyFile", type.getClass());
        write.setAccessible(true);
        if (!(Boolean) write.invoke(null, type)) {
            throw new IOException("the key file could not be written");
        }
        return "";
    }
}
