$01900000-0000-7000-8000-000000000041artifact/03 )()2© ‚–ÄÂöw:$01900000-0000-7000-8000-00000000c0deB$01900000-0000-7000-8000-00000000c0deJalice@example.comR9
700-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01ZS P
2
GET+https://charts.example.com/nginx-15.1.0.tgz
etag
"5f1a-17b"© ‚–