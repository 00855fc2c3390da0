package cifar10.frontend;

import cifar10.frontend.Agent.UnexpectedBytecode;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.List;
import org.objectweb.asm.tree.ClassNode;
import org.pytorch.serve.archive.model.InvalidModelException;

/**
 * A model is registered only by the file name of an archive in the model store (applied by
 * {@link Agent}).
 *
 * <p>TorchServe's {@code ModelArchive.downloadModel} refuses URLs that {@code allowed_urls} does
 * not match and relative paths with {@code ..}, but it loads any absolute folder that holds a
 * {@code MAR-INF/MANIFEST.json}, and runs the handler in it: the management key would run any
 * code on the machine, and "Model not found at: ..." tells which folders exist. This rewrite
 * calls {@link #downloadModel} first: the URL must be a bare file name, and that name must stand
 * in the model store for a file (or a folder) that really lies there (no link out of it).
 * Everything else is refused with 400, the same answer whether or not the path exists, before
 * TorchServe looks at it.
 */
public final class ArchiveNamesOnly {
    static final String MODEL_ARCHIVE = "org/pytorch/serve/archive/model/ModelArchive";
    static final String DESCRIPTOR =
            "(Ljava/util/List;Ljava/lang/String;Ljava/lang/String;Z)Lorg/pytorch/serve/archive/model/ModelArchive;";
    static final int SHOWN_CHARACTERS = 80;

    private ArchiveNamesOnly() {}

    /** ModelArchive's class file with downloadModel(allowedUrls, modelStore, url, sse) checking the url first. */
    static byte[] rewrite(byte[] original) throws UnexpectedBytecode {
        ClassNode archive = Agent.read(original);
        Agent.callFirst(
                Agent.method(archive, "downloadModel", DESCRIPTOR),
                "ArchiveNamesOnly",
                "(Ljava/util/List;Ljava/lang/String;Ljava/lang/String;)V",
                0,
                1,
                2);
        return Agent.write(archive);
    }

    /** Returns when `url` names an archive in `modelStore`; otherwise throws InvalidModelException (400). */
    public static void downloadModel(List<String> allowedUrls, String modelStore, String url)
            throws InvalidModelException {
        String refusal = refusal(modelStore, url);
        if (refusal != null) {
            throw new InvalidModelException(refusal);
        }
    }

    /** Why `url` is refused, or null when it is the name of a file or folder inside `modelStore`. */
    static String refusal(String modelStore, String url) {
        String advice = "a model is registered only by the file name of an archive in the model store (e.g."
                + " cifar10.mar); ";
        if (modelStore == null || url == null || url.isEmpty()) {
            return advice + "no name was given";
        }
        String shown = url.length() > SHOWN_CHARACTERS ? url.substring(0, SHOWN_CHARACTERS) + "..." : url;
        if (url.contains("/") || url.contains("\\") || url.equals(".") || url.equals("..") || url.indexOf(0) >= 0) {
            return advice + "'" + shown + "' is not a file name";
        }
        try {
            Path store = Paths.get(modelStore).toRealPath();
            Path named = store.resolve(url);
            if (Files.exists(named, LinkOption.NOFOLLOW_LINKS) && store.equals(named.toRealPath().getParent())) {
                return null;
            }
        } catch (IOException | RuntimeException notThere) {
            // answered as any name that is not in the store
        }
        return advice + "the model store has no archive named '" + shown + "'";
    }
}
