# containerd's pod sandbox image for the e2e node (registry.k8s.io/pause is not reachable).
# pause.c is built static on the host by images.sh and copied in.
FROM scratch
COPY pause /pause
USER 65535:65535
ENTRYPOINT ["/pause"]
