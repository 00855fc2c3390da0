"""What `make test` installed left the machine as it was: nginx and HAProxy are there as programs
(the gateway and balancer tests run them with configurations of their own), not as daemons."""

import psutil


def test_no_system_nginx_or_haproxy_daemon_runs():
    daemons = []
    for process in psutil.process_iter(["name", "cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        nginx_master = cmdline.startswith("nginx: master process")
        if "/etc/nginx/" in cmdline or "/etc/haproxy/" in cmdline or (nginx_master and " -p " not in cmdline):
            daemons.append(cmdline)
    assert not daemons, f"system daemons running: {daemons}"
    listening = {conn.laddr.port for conn in psutil.net_connections("tcp") if conn.status == psutil.CONN_LISTEN}
    assert 80 not in listening, "something listens on port 80 (a system nginx?)"
