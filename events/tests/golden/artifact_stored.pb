$01900000-0000-7000-8000-000000000040artifact/03 (((2¨ÊâÐ€åšw:$01900000-0000-7000-8000-00000000c0deB$01900000-0000-7000-8000-00000000c0deJalice@example.comR9
700-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01ZêÂæ
2
GET+https://charts.example.com/nginx-15.1.0.tgzÈ 
content-typeapplication/gzip
etag
"5f1a-17b"
cache-controlmax-age=300*Gsha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae0:¨ÊâÐBcharts