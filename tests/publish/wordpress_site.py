"""A real WordPress for tests: Debian's `wordpress` package (6.1), PHP's built-in server and
the MariaDB at 127.0.0.1:3306 (root, no password; CI has the same).

``WordPressSite`` makes a site of its own: a fresh database and user, Debian's per-site config
(``/etc/wordpress/config-<name>.php``, the file the package's ``wp-config.php`` reads; the
router picks it by setting ``WORDPRESS_CONFIG``, as Apache's ``SetEnv`` would), its own
``wp-content`` (uploads, and as must-use plugins the two PHP files docs/api.md tells a site
owner to install: the SEO post meta registered for REST, and the webhook receiver), ``php -S``
on a free loopback port with a router script so that `/wp-json/` and `/wp-content/` work, then
``wp_install`` and an application password made through WordPress's own PHP
(``WP_Application_Passwords``). Application passwords need HTTPS unless the environment type is
`local`, which the config sets. ``stop()`` removes all of it: server, database, user, config
and files.

``.ci/run`` installs the packages (`wordpress php-cli php-mysql`); without them the tests skip,
saying which is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from tests.processes import free_port

WORDPRESS_ROOT = Path("/usr/share/wordpress")
DEBIAN_CONFIG_DIR = Path("/etc/wordpress")
MYSQL_HOST, MYSQL_PORT = "127.0.0.1", 3306
ADMIN = "editor"

DOCS = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def docs_php(needle: str) -> str:
    """The ```php block of docs/api.md that contains ``needle``: the tests run what the docs
    tell a site owner to install, word for word."""
    blocks = re.findall(r"```php\n(.*?)```", DOCS.read_text(), flags=re.S)
    [block] = [b for b in blocks if needle in b]
    return block


# No mail leaves a test site (wp_install notifies the admin).
NO_MAIL_PLUGIN = "<?php add_filter( 'pre_wp_mail', '__return_false' );\n"

ROUTER = """<?php
// php -S router: what Debian's Apache config does for a WordPress site.
$_SERVER['WORDPRESS_CONFIG'] = '%(config)s';
$path = parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH);
$content = '%(content)s';
if (strpos($path, '/wp-content/') === 0) {
    $file = realpath($content . substr($path, strlen('/wp-content')));
    if ($file && strpos($file, $content . '/') === 0 && is_file($file)
        && substr($file, -4) !== '.php') {
        $types = array('png' => 'image/png', 'jpg' => 'image/jpeg', 'webp' => 'image/webp');
        $ext = strtolower(pathinfo($file, PATHINFO_EXTENSION));
        header('Content-Type: ' . ($types[$ext] ?? 'application/octet-stream'));
        readfile($file);
        return true;
    }
    http_response_code(404);
    return true;
}
$file = '/usr/share/wordpress' . $path;
if (is_file($file) && substr($file, -4) !== '.php') {
    return false;
}
if (is_dir($file) && is_file(rtrim($file, '/') . '/index.php')) {
    $file = rtrim($file, '/') . '/index.php';
}
if (!is_file($file)) {
    $file = '/usr/share/wordpress/index.php';
}
$_SERVER['SCRIPT_FILENAME'] = $file;
$_SERVER['SCRIPT_NAME'] = $_SERVER['PHP_SELF'] = substr($file, strlen('/usr/share/wordpress'));
chdir(dirname($file));
require $file;
"""

CONFIG = """<?php
define('DB_NAME', '%(db)s');
define('DB_USER', '%(db)s');
define('DB_PASSWORD', '%(db_password)s');
define('DB_HOST', '%(mysql)s');
define('DB_CHARSET', 'utf8mb4');
define('WP_HOME', '%(url)s');
define('WP_SITEURL', '%(url)s');
define('WP_CONTENT_DIR', '%(content)s');
define('WP_CONTENT_URL', '%(url)s/wp-content');
define('WP_ENVIRONMENT_TYPE', 'local');
define('DISABLE_WP_CRON', true);
define('AUTOMATIC_UPDATER_DISABLED', true);
define('WP_HTTP_BLOCK_EXTERNAL', true);
%(salts)s
$table_prefix = 'wp_';
"""

INSTALL = """<?php
$_SERVER['WORDPRESS_CONFIG'] = '%(config)s';
$_SERVER['HTTP_HOST'] = '127.0.0.1:%(port)d';
$_SERVER['REQUEST_URI'] = '/';
$root = new mysqli('%(host)s', 'root', '', null, %(mysql_port)d);
$root->query("CREATE DATABASE `%(db)s` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci");
$root->query("CREATE USER '%(db)s'@'%(host)s' IDENTIFIED BY '%(db_password)s'");
$root->query("GRANT ALL ON `%(db)s`.* TO '%(db)s'@'%(host)s'");
$root->close();
define('WP_INSTALLING', true);
require '/usr/share/wordpress/wp-load.php';
require_once ABSPATH . 'wp-admin/includes/upgrade.php';
wp_install('articleforge test site', '%(admin)s', 'editor@example.com', false, '',
           wp_slash('%(admin_password)s'));
update_option('permalink_structure', '/%%postname%%/');
$user = get_user_by('login', '%(admin)s');
list($password, $item) = WP_Application_Passwords::create_new_application_password(
    $user->ID, array('name' => 'articleforge tests'));
echo json_encode(array('app_password' => $password, 'user_id' => $user->ID));
"""

SET_OPTION = """<?php
$_SERVER['WORDPRESS_CONFIG'] = '%(config)s';
$_SERVER['HTTP_HOST'] = '127.0.0.1:%(port)d';
require '/usr/share/wordpress/wp-load.php';
if ('%(option)s' === 'permalink_structure') {  // as Settings -> Permalinks saves it
    $GLOBALS['wp_rewrite']->set_permalink_structure('%(value)s');
    flush_rewrite_rules(false);
} else {
    update_option('%(option)s', '%(value)s');
}
"""

DROP = """<?php
$root = new mysqli('%(host)s', 'root', '', null, %(mysql_port)d);
$root->query("DROP DATABASE IF EXISTS `%(db)s`");
$root->query("DROP USER IF EXISTS '%(db)s'@'%(host)s'");
"""


def missing() -> str | None:
    """Why a real WordPress cannot run here, or None when it can."""
    if not (WORDPRESS_ROOT / "wp-settings.php").exists():
        return "Debian's `wordpress` package is not installed (apt-get install wordpress)"
    if shutil.which("php") is None:
        return "`php` is not installed (apt-get install php-cli php-mysql)"
    probe = subprocess.run(
        ["php", "-r", "echo extension_loaded('mysqli') ? 'yes' : 'no';"],
        capture_output=True,
        text=True,
    )
    if probe.stdout != "yes":
        return "PHP has no mysqli (apt-get install php-mysql)"
    return None


class WordPressSite:
    def __init__(self, webhook_secret: str) -> None:
        self.webhook_secret = webhook_secret
        token = secrets.token_hex(4)
        self.name = f"af-test-{token}"  # Debian's config name: [a-zA-Z0-9-]+
        self.db = f"af_wp_{token}"
        self.db_password = secrets.token_hex(12)
        self.admin_password = secrets.token_hex(12)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.user = ADMIN
        self.app_password = ""
        self.dir = Path(tempfile.mkdtemp(prefix="af-wordpress-"))
        self.content = self.dir / "wp-content"
        self.config_path = DEBIAN_CONFIG_DIR / f"config-{self.name}.php"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_in = 0.0

    def _values(self) -> dict[str, object]:
        return {
            "config": self.name,
            "content": str(self.content),
            "db": self.db,
            "db_password": self.db_password,
            "mysql": f"{MYSQL_HOST}:{MYSQL_PORT}",
            "host": MYSQL_HOST,
            "mysql_port": MYSQL_PORT,
            "url": self.url,
            "port": self.port,
            "admin": ADMIN,
            "admin_password": self.admin_password,
        }

    def _php(self, script: str) -> str:
        path = self.dir / f"script-{secrets.token_hex(3)}.php"
        path.write_text(script)
        done = subprocess.run(["php", str(path)], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(
                f"php {path.name} failed: {done.stdout[-2000:]}{done.stderr[-2000:]}"
            )
        return done.stdout

    def start(self) -> WordPressSite:
        started = time.monotonic()
        for sub in ("uploads", "mu-plugins", "plugins", "themes"):
            (self.content / sub).mkdir(parents=True)
        plugins = self.content / "mu-plugins"
        (plugins / "af-seo-meta.php").write_text(docs_php("register_post_meta( 'post', $key"))
        # The webhook receiver of docs/api.md, its secret, and its post meta readable over REST.
        (plugins / "af-0-secret.php").write_text(
            f"<?php define('ARTICLEFORGE_WEBHOOK_SECRET', '{self.webhook_secret}');\n"
            "add_action('init', function () { register_post_meta('post', 'articleforge_id', "
            "array('type' => 'string', 'single' => true, 'show_in_rest' => true)); });\n"
        )
        (plugins / "af-webhook.php").write_text(docs_php("function articleforge_verify_webhook"))
        (plugins / "af-no-mail.php").write_text(NO_MAIL_PLUGIN)
        salts = "\n".join(
            f"define('{name}', '{secrets.token_hex(32)}');"
            for name in (
                "AUTH_KEY SECURE_AUTH_KEY LOGGED_IN_KEY NONCE_KEY "
                "AUTH_SALT SECURE_AUTH_SALT LOGGED_IN_SALT NONCE_SALT"
            ).split()
        )
        DEBIAN_CONFIG_DIR.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(CONFIG % {**self._values(), "salts": salts})
        (self.dir / "router.php").write_text(ROUTER % self._values())
        reply = self._php(INSTALL % self._values())
        self.app_password = json.loads(reply[reply.index("{") :])["app_password"]
        self.start_server()
        self.started_in = time.monotonic() - started
        return self

    def start_server(self) -> None:
        """`php -S` on the site's port (again, after ``stop_server``: the site is unchanged)."""
        self.proc = subprocess.Popen(
            ["php", "-S", f"127.0.0.1:{self.port}", "-t", str(WORDPRESS_ROOT), "router.php"],
            cwd=self.dir,
            env={"PATH": "/usr/bin:/bin", "PHP_CLI_SERVER_WORKERS": "4"},
            stdout=open(self.dir / "server.log", "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            # Its own process group: PHP_CLI_SERVER_WORKERS forks workers that keep the port
            # open when only the parent is stopped.
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{self.url}/wp-json/", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (self.dir / "server.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"WordPress did not answer at {self.url}/wp-json/\n{log}")
            time.sleep(0.1)

    def stop_server(self) -> None:
        """Stops `php -S` (the site is down: connections are refused); the data stays."""
        if self.proc is None:
            return
        group = self.proc.pid  # the server and its forked workers
        os.killpg(group, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(group, signal.SIGKILL)
            self.proc.wait()
        self.proc = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until the workers have let go of the port
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            except OSError:
                return
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)

    def set_option(self, name: str, value: str) -> None:
        """Sets a WordPress option through WordPress's PHP (as wp-admin would)."""
        self._php(SET_OPTION % {**self._values(), "option": name, "value": value})

    def api(self) -> httpx.Client:
        """An authenticated client of the site's REST API (reads back what was published)."""
        return httpx.Client(
            base_url=f"{self.url}/wp-json",
            auth=(self.user, self.app_password),
            timeout=30,
        )

    def stop(self) -> None:
        self.stop_server()
        try:
            self._php(DROP % self._values())
        finally:
            self.config_path.unlink(missing_ok=True)
            shutil.rmtree(self.dir, ignore_errors=True)
