# Cluster DNS of the e2e node: the CoreDNS that tests/cluster/build.sh builds from Go
# modules (static, CGO off), alone in the image like the upstream one.
FROM scratch
COPY coredns /coredns
USER 65532:65532
EXPOSE 53 53/udp
ENTRYPOINT ["/coredns"]
